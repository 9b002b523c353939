#!/usr/bin/env bash
# Run HERE (a machine with the .NET SDK and the package registry): builds a self-contained linux-x64 inference-server
# for a GPU machine that has a PyTorch install (CUDA libtorch under site-packages/torch/lib) but no dotnet.
#   bench/gpu/publish.sh [OUT_DIR]      (default: artifacts/gpu/inference-server, which git ignores)
# - TorchBackend=none: no libtorch is bundled; the GPU machine's torch/lib is put on LD_LIBRARY_PATH by run.sh.
# - TorchSharp's own native bridge, libLibTorchSharp.so, ships in the TorchSharp package (not in the CPU libtorch
#   package) and is published next to TorchSharp.dll; TorchRuntime patches its GLIBCXX need at start if required.
# - Trimming: TrimMode=partial trims only assemblies that declare themselves trimmable (the .NET libraries); the app,
#   TorchSharp (reflection over module fields), System.CommandLine and Spectre.Console are kept whole. Reflection-based
#   JSON stays enabled (model cards and configs are read with it). No single-file bundle: TorchSharp locates its
#   native bridge next to TorchSharp.dll.
# - Fails when the folder is not under 64 MiB (what the GPU machine's copy of the work tree may carry).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:-$root/artifacts/gpu/inference-server}
limit_mib=64

rm -rf "$out"
dotnet publish "$root/src/InferenceServer.Server/InferenceServer.Server.csproj" -c Release -r linux-x64 --self-contained true -nologo -v q \
  -p:TorchBackend=none \
  -p:PublishTrimmed=true -p:TrimMode=partial -p:SuppressTrimAnalysisWarnings=true \
  -p:JsonSerializerIsReflectionEnabledByDefault=true \
  -p:DebugType=none -p:DebugSymbols=false -p:GenerateDocumentationFile=false \
  -p:CreateHardLinksForCopyLocalIfPossible=false \
  -o "$out"

bridge="$out/libLibTorchSharp.so"
if [ ! -f "$bridge" ]; then
  # Fallback: take it from the restored TorchSharp package.
  ver=$(sed -n 's/.*Include="TorchSharp" Version="\([^"]*\)".*/\1/p' "$root/Directory.Packages.props")
  cp "${NUGET_PACKAGES:-$HOME/.nuget/packages}/torchsharp/$ver/runtimes/linux-x64/native/libLibTorchSharp.so" "$bridge"
fi
# Nothing of a CPU libtorch may have come along.
if ls "$out"/libtorch*.so "$out"/libc10*.so >/dev/null 2>&1; then
  echo "publish.sh: a libtorch was bundled (TorchBackend=none should prevent that):" >&2; ls "$out"/libtorch*.so "$out"/libc10*.so >&2; exit 1
fi
# Runtime files a headless run never loads: the debugger and crash-dump support (DAC, DBI, createdump), the
# standalone GC variants (only with DOTNET_GCName) and the LTTng trace provider (optional at start).
rm -f "$out"/libmscordaccore.so "$out"/libmscordbi.so "$out"/createdump "$out"/libclrgc.so "$out"/libclrgcexp.so "$out"/libcoreclrtraceptprovider.so
cp "$root/bench/gpu/run.sh" "$out/run.sh"

bytes=$(du -sb "$out" | cut -f1)
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "publish.sh: $out: $mib MiB in $(find "$out" -type f | wc -l) files"
du -sb "$out"/* | sort -rn | head -8 | awk '{ printf "  %8.1f MiB  %s\n", $1 / 1048576, $2 }'
if [ "$bytes" -ge $((limit_mib * 1048576)) ]; then
  echo "publish.sh: over the $limit_mib MiB limit" >&2; exit 1
fi

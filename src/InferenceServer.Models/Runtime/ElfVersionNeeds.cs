using System.Buffers.Binary;
using System.Text;

namespace InferenceServer.Models.Runtime;

/// <summary>One symbol-version requirement of a shared library (an entry of <c>.gnu.version_r</c>).</summary>
/// <param name="Library">The needed library, e.g. <c>libstdc++.so.6</c>.</param>
/// <param name="Version">The version name, e.g. <c>GLIBCXX_3.4.32</c>.</param>
/// <param name="IsWeak">Whether the entry carries VER_FLG_WEAK (a missing version is then not fatal).</param>
/// <param name="FlagsOffset">File offset of the entry's 16-bit <c>vna_flags</c> field.</param>
public sealed record ElfVersionNeed(string Library, string Version, bool IsWeak, long FlagsOffset);

/// <summary>
/// Reads and edits the GNU symbol-versioning sections of a 64-bit little-endian ELF file.
/// TorchSharp's native bridge is built against a newer libstdc++ than Debian 12 ships and asks for
/// GLIBCXX_3.4.32, which it does not really need; marking that requirement weak lets the loader accept it.
/// </summary>
public static class ElfVersionNeeds
{
    const uint ShtGnuVerdef = 0x6ffffffd;
    const uint ShtGnuVerneed = 0x6ffffffe;
    const ushort VerFlgWeak = 0x2;

    /// <summary>Every version requirement in the file's <c>.gnu.version_r</c> section.</summary>
    public static IReadOnlyList<ElfVersionNeed> ReadNeeds(ReadOnlySpan<byte> elf, string fileName = "ELF file")
    {
        var result = new List<ElfVersionNeed>();
        foreach (var (offset, count, strtab) in Sections(elf, ShtGnuVerneed, fileName))
        {
            long entry = offset;
            for (int i = 0; i < count; i++)
            {
                // Elf64_Verneed: vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32
                ushort auxCount = U16(elf, entry + 2, fileName);
                string library = CString(elf, strtab + U32(elf, entry + 4, fileName), fileName);
                long aux = entry + U32(elf, entry + 8, fileName);
                for (int j = 0; j < auxCount; j++)
                {
                    // Elf64_Vernaux: vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32
                    ushort flags = U16(elf, aux + 4, fileName);
                    string version = CString(elf, strtab + U32(elf, aux + 8, fileName), fileName);
                    result.Add(new ElfVersionNeed(library, version, (flags & VerFlgWeak) != 0, aux + 4));
                    uint next = U32(elf, aux + 12, fileName);
                    if (next == 0) break;
                    aux += next;
                }
                uint nextEntry = U32(elf, entry + 12, fileName);
                if (nextEntry == 0) break;
                entry += nextEntry;
            }
        }
        return result;
    }

    /// <summary>Every version a library defines (its <c>.gnu.version_d</c> names), e.g. all GLIBCXX_* of libstdc++.</summary>
    public static IReadOnlySet<string> ReadDefinitions(ReadOnlySpan<byte> elf, string fileName = "ELF file")
    {
        var result = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (offset, count, strtab) in Sections(elf, ShtGnuVerdef, fileName))
        {
            long entry = offset;
            for (int i = 0; i < count; i++)
            {
                // Elf64_Verdef: vd_version u16, vd_flags u16, vd_ndx u16, vd_cnt u16, vd_hash u32, vd_aux u32, vd_next u32
                long aux = entry + U32(elf, entry + 12, fileName);
                // Elf64_Verdaux: vda_name u32, vda_next u32 (the first aux names the version itself)
                result.Add(CString(elf, strtab + U32(elf, aux, fileName), fileName));
                uint next = U32(elf, entry + 16, fileName);
                if (next == 0) break;
                entry += next;
            }
        }
        return result;
    }

    /// <summary>Sets VER_FLG_WEAK on every requirement <paramref name="select"/> picks; returns the versions changed.</summary>
    public static IReadOnlyList<string> MarkWeak(Span<byte> elf, Func<ElfVersionNeed, bool> select, string fileName = "ELF file")
    {
        var changed = new List<string>();
        foreach (var need in ReadNeeds(elf, fileName))
        {
            if (need.IsWeak || !select(need)) continue;
            var field = elf.Slice(checked((int)need.FlagsOffset), 2);
            BinaryPrimitives.WriteUInt16LittleEndian(field, (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(field) | VerFlgWeak));
            changed.Add(need.Version);
        }
        return changed;
    }

    static IEnumerable<(long Offset, uint Count, long StringTable)> Sections(ReadOnlySpan<byte> elf, uint type, string fileName)
    {
        if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F')
            throw new InvalidDataException($"{fileName}: not an ELF file");
        if (elf[4] != 2 || elf[5] != 1)
            throw new InvalidDataException($"{fileName}: only 64-bit little-endian ELF is supported");
        long shoff = (long)U64(elf, 0x28, fileName);
        ushort shentsize = U16(elf, 0x3A, fileName);
        ushort shnum = U16(elf, 0x3C, fileName);
        var found = new List<(long, uint, long)>();
        for (int i = 0; i < shnum; i++)
        {
            long sh = shoff + (long)i * shentsize;
            // Elf64_Shdr: name u32, type u32, flags u64, addr u64, offset u64, size u64, link u32, info u32, ...
            if (U32(elf, sh + 4, fileName) != type) continue;
            long offset = (long)U64(elf, sh + 24, fileName);
            uint link = U32(elf, sh + 40, fileName);
            uint info = U32(elf, sh + 44, fileName);   // number of entries
            long linkHeader = shoff + (long)link * shentsize;
            long strtab = (long)U64(elf, linkHeader + 24, fileName);
            found.Add((offset, info, strtab));
        }
        return found;
    }

    static ushort U16(ReadOnlySpan<byte> b, long at, string f) => BinaryPrimitives.ReadUInt16LittleEndian(Slice(b, at, 2, f));
    static uint U32(ReadOnlySpan<byte> b, long at, string f) => BinaryPrimitives.ReadUInt32LittleEndian(Slice(b, at, 4, f));
    static ulong U64(ReadOnlySpan<byte> b, long at, string f) => BinaryPrimitives.ReadUInt64LittleEndian(Slice(b, at, 8, f));

    static ReadOnlySpan<byte> Slice(ReadOnlySpan<byte> b, long at, int length, string fileName)
    {
        if (at < 0 || at + length > b.Length) throw new InvalidDataException($"{fileName}: truncated ELF (offset {at} beyond {b.Length} bytes)");
        return b.Slice((int)at, length);
    }

    static string CString(ReadOnlySpan<byte> b, long at, string fileName)
    {
        var rest = Slice(b, at, 1, fileName).Length == 1 ? b[(int)at..] : default;
        int end = rest.IndexOf((byte)0);
        if (end < 0) throw new InvalidDataException($"{fileName}: unterminated string at offset {at}");
        return Encoding.ASCII.GetString(rest[..end]);
    }
}

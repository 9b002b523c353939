// Calls inference.v1.ImageService/Generate with @grpc/grpc-js and checks the answer: one PNG of the requested size.
// Usage: node generate.js HOST:PORT [WIDTH HEIGHT]. Prints one JSON line; exit code 0 when every check passes.
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [address, width = '96', height = '64'] = process.argv.slice(2);
const protoPath = path.join(__dirname, '..', '..', 'src', 'InferenceServer.Client', 'Protos', 'inference.proto');
const definition = protoLoader.loadSync(protoPath, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
const { ImageService } = grpc.loadPackageDefinition(definition).inference.v1;

const client = new ImageService(address, grpc.credentials.createInsecure(), {
  'grpc.max_receive_message_length': 512 * 1024 * 1024,
  'grpc.max_send_message_length': 200 * 1024 * 1024,
});
const request = { prompt: 'a lighthouse at dusk', width: Number(width), height: Number(height), seed: 42, steps: 2, request_id: 'node-1' };

client.Generate(request, { deadline: Date.now() + 120000 }, (err, response) => {
  if (err) {
    console.log(JSON.stringify({ ok: false, code: err.code, details: err.details }));
    process.exit(1);
  }
  const image = response.images[0];
  const data = image.data;                                    // a Buffer
  const signature = data.subarray(0, 8).toString('hex');
  const png = signature === '89504e470d0a1a0a' && data.subarray(12, 16).toString('ascii') === 'IHDR';
  const pngWidth = png ? data.readUInt32BE(16) : 0;
  const pngHeight = png ? data.readUInt32BE(20) : 0;
  const ok = response.images.length === 1 && image.mime_type === 'image/png' && png
    && pngWidth === request.width && pngHeight === request.height && image.seed === '42' && response.request_id === 'node-1';
  console.log(JSON.stringify({ ok, images: response.images.length, mime: image.mime_type, png, width: pngWidth, height: pngHeight,
    seed: image.seed, request_id: response.request_id, bytes: data.length, total_ms: response.timings.total_ms }));
  client.close();
  process.exit(ok ? 0 : 1);
});

// A durable job through inference.v1.JobService with @grpc/grpc-js: SubmitJob, WatchJob until the job ends, GetJobImages.
// Usage: node job.js HOST:PORT PROMPT [WIDTH HEIGHT STEPS SEED]. Prints JSON lines as things happen:
//   {"submitted":ID,"created":true,"status":"queued"}
//   {"event":TYPE,"status":STATE,"step":N,"total_steps":N}     one per JobEvent, in the order received
//   {"ok":BOOL,"id":ID,"status":STATE,"images":[{"index","mime","width","height","seed","bytes","sha256"}]}
// Exit code 0 when the job succeeded and every image is a PNG of the requested size.
'use strict';
const crypto = require('crypto');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [address, prompt = 'a lighthouse at dusk', width = '64', height = '64', steps = '2', seed = '5'] = process.argv.slice(2);
const protoPath = path.join(__dirname, '..', '..', 'src', 'InferenceServer.Client', 'Protos', 'inference.proto');
const definition = protoLoader.loadSync(protoPath, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
const { JobService } = grpc.loadPackageDefinition(definition).inference.v1;

const jobs = new JobService(address, grpc.credentials.createInsecure(), {
  'grpc.max_receive_message_length': 512 * 1024 * 1024,
  'grpc.max_send_message_length': 200 * 1024 * 1024,
});
const deadline = () => ({ deadline: Date.now() + 120000 });
// JOB_STATE_SUCCEEDED -> succeeded: the names the events use.
const state = (s) => String(s).replace('JOB_STATE_', '').toLowerCase();
const print = (o) => console.log(JSON.stringify(o));
const fail = (what, err) => {
  print({ ok: false, what, code: err.code, details: err.details });
  process.exit(1);
};
const unary = (method, request) => new Promise((resolve, reject) =>
  jobs[method](request, deadline(), (err, response) => (err ? reject(err) : resolve(response))));

function watch(id) {
  return new Promise((resolve, reject) => {
    let last = null;
    const call = jobs.WatchJob({ id }, deadline());
    call.on('data', (e) => {
      last = e.job;
      print({ event: e.type, status: state(e.job.status), step: e.job.step, total_steps: e.job.total_steps });
    });
    call.on('error', reject);
    call.on('end', () => resolve(last));                       // the server ends the stream after a terminal state
  });
}

(async () => {
  const request = { prompt, width: Number(width), height: Number(height), steps: Number(steps), seed: Number(seed) };
  let submitted;
  try { submitted = await unary('SubmitJob', { request }); } catch (err) { fail('SubmitJob', err); }
  const id = submitted.job.id;
  print({ submitted: id, created: submitted.created, status: state(submitted.job.status) });

  let job;
  try { job = await watch(id); } catch (err) { fail('WatchJob', err); }
  if (!job || state(job.status) !== 'succeeded') {
    print({ ok: false, id, status: job ? state(job.status) : null });
    process.exit(1);
  }

  let response;
  try { response = await unary('GetJobImages', { id }); } catch (err) { fail('GetJobImages', err); }
  const images = response.images.map((image, index) => {
    const data = image.data;                                   // a Buffer
    const png = data.subarray(0, 8).toString('hex') === '89504e470d0a1a0a';
    return {
      index, mime: image.mime_type, png, width: png ? data.readUInt32BE(16) : 0, height: png ? data.readUInt32BE(20) : 0,
      seed: image.seed, bytes: data.length, sha256: crypto.createHash('sha256').update(data).digest('hex'),
    };
  });
  const ok = images.length === job.result.images.length && images.length > 0
    && images.every((i) => i.png && i.width === request.width && i.height === request.height);
  print({ ok, id, status: state(job.status), images });
  jobs.close();
  process.exit(ok ? 0 : 1);
})();

// A minimal OpenAI-compatible upstream for relay benches: POST /v1/chat/completions answers a
// fixed chat.completion JSON at once (SSE chunks with "stream":true). Listens on 127.0.0.1:$PORT.
'use strict';
const http = require('node:http');

const PORT = Number(process.env.PORT || 18401);
const OK = Buffer.from(JSON.stringify({
  id: 'chatcmpl-mock', object: 'chat.completion', created: 1700000000, model: 'gpt-4o-mini',
  choices: [{ index: 0, message: { role: 'assistant', content: 'Hello from mock', refusal: null }, logprobs: null, finish_reason: 'stop' }],
  usage: { prompt_tokens: 9, completion_tokens: 4, total_tokens: 13 }, system_fingerprint: 'fp_mock',
}));
const server = http.createServer((req, res) => {
  let raw = '';
  req.setEncoding('utf8');
  req.on('data', (d) => { raw += d; });
  req.on('end', () => {
    if (raw.includes('"stream":true')) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: {"choices":[{"delta":{"content":"Hello"}}]}\n\n');
      res.end('data: [DONE]\n\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': OK.length });
    res.end(OK);
  });
});
server.keepAliveTimeout = 65_000;
server.listen(PORT, '127.0.0.1');
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => { server.close(); process.exit(0); });

// Loopback port helpers shared by the jest global setup and the Redis test helpers.
import net from 'node:net';

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

/** Resolves once something accepts connections on 127.0.0.1:port; rejects after `ms`. */
export async function waitForPort(port: number, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.end();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`nothing listened on ${port} within ${ms} ms`);
}

/**
 * Sends a JSON POST to 127.0.0.1:port and abandons it after `afterMs` (the client goes away
 * mid-request). Resolves once the socket is destroyed.
 */
export async function abandonedPost(port: number, path: string, body: unknown, afterMs: number): Promise<void> {
  const http = await import('node:http');
  await new Promise<void>((resolve) => {
    const req = http.request({ port, method: 'POST', path, headers: { 'content-type': 'application/json' } });
    req.on('error', () => resolve());
    req.end(JSON.stringify(body));
    setTimeout(() => {
      req.destroy();
      resolve();
    }, afterMs);
  });
}

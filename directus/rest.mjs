// rest.mjs — what the scripts of directus/ (and tests/directus) share about a Directus set up by
// dstack.sh in DIR: its credentials (DIR/credentials, KEY=value lines), its base URL
// (DIR/port), and its REST calls: call() gives {status, body} (the tests look at statuses),
// adminApi() returns `data` or throws with the status and body.
import { readFileSync } from 'node:fs';
import path from 'node:path';

export function credentials(dir) {
  return Object.fromEntries(readFileSync(path.join(dir, 'credentials'), 'utf8').split('\n')
    .filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

export function baseUrl(dir) {
  return `http://127.0.0.1:${readFileSync(path.join(dir, 'port'), 'utf8').trim()}`;
}

// One request with a bearer token (none when token is null); body parsed when it is JSON.
export async function call(base, token, method, p, body) {
  const res = await fetch(base + p, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed = text;
  try { parsed = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, body: parsed };
}

// api(method, path, body) with DIR's admin token: the response's `data`, or throws.
export function adminApi(dir) {
  const token = credentials(dir).ADMIN_TOKEN;
  const base = baseUrl(dir);
  return async function api(method, p, body) {
    const r = await call(base, token, method, p, body);
    if (r.status < 200 || r.status > 299) {
      throw new Error(`${method} ${p}: HTTP ${r.status} ${JSON.stringify(r.body).slice(0, 500)}`);
    }
    return r.body === '' ? null : r.body.data;
  };
}

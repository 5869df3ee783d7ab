// rest.mjs — what the scripts of directus/ (and tests/directus) share about a Directus set up by
// dstack.sh in DIR: its credentials (DIR/credentials, KEY=value lines), its base URL
// (DIR/port), and an admin REST call that returns `data` or throws with the status and body.
import { readFileSync } from 'node:fs';
import path from 'node:path';

export function credentials(dir) {
  return Object.fromEntries(readFileSync(path.join(dir, 'credentials'), 'utf8').split('\n')
    .filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

export function baseUrl(dir) {
  return `http://127.0.0.1:${readFileSync(path.join(dir, 'port'), 'utf8').trim()}`;
}

// api(method, path, body) with DIR's admin token.
export function adminApi(dir) {
  const token = credentials(dir).ADMIN_TOKEN;
  const base = baseUrl(dir);
  return async function api(method, p, body) {
    const res = await fetch(base + p, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p}: HTTP ${res.status} ${text.slice(0, 500)}`);
    return text ? JSON.parse(text).data : null;
  };
}

// access.mjs DIR ACCESS_JSON — applies who may do what in Directus (schema/directus/access.json)
// over REST with DIR's admin token, so that roles, policies, permissions, users and the
// collections' default views (presets) are part of what is applied, never clicked by hand. A
// snapshot does not carry them (directus/README.md).
//
// Idempotent, by name: a policy or role is created or updated; a policy's permissions are
// made exactly the file's (those not in it are deleted); a user (by email, from DIR/credentials)
// is created or gets the file's role, status and the password of DIR/credentials; a preset (by
// collection, for everyone) is created or replaced.
// Exit 0 done, 1 an API error (printed).
import { readFileSync } from 'node:fs';
import { adminApi, credentials } from './rest.mjs';

const [dir, accessPath] = process.argv.slice(2);
if (!dir || !accessPath) {
  console.error('usage: node access.mjs DIR ACCESS_JSON');
  process.exit(2);
}
const env = credentials(dir);
const api = adminApi(dir);
const access = JSON.parse(readFileSync(accessPath, 'utf8'));

const q = (field, value) => `filter[${field}][_eq]=${encodeURIComponent(value)}`;

async function upsertByName(collectionPath, item) {
  const found = await api('GET', `${collectionPath}?${q('name', item.name)}&fields=id`);
  if (found.length > 0) return (await api('PATCH', `${collectionPath}/${found[0].id}`, item)).id;
  return (await api('POST', collectionPath, item)).id;
}

async function applyPolicy(p) {
  const { permissions, ...fields } = p;
  const id = await upsertByName('/policies', fields);
  const have = await api('GET', `/permissions?${q('policy', id)}&fields=id&limit=-1`);
  if (have.length > 0) await api('DELETE', '/permissions', have.map((x) => x.id));
  for (const perm of permissions) await api('POST', '/permissions', { ...perm, policy: id });
  return id;
}

async function applyRole(r, policyIds) {
  const { policies, ...fields } = r;
  const id = await upsertByName('/roles', fields);
  for (const name of policies) {
    const policy = policyIds.get(name);
    if (!policy) throw new Error(`role ${r.name}: no policy named ${name} in the file`);
    const linked = await api('GET', `/access?${q('role', id)}&${q('policy', policy)}&fields=id`);
    if (linked.length === 0) await api('POST', '/access', { role: id, policy });
  }
  return id;
}

async function applyUser(u, roleIds) {
  const email = env[u.email_from];
  const password = env[u.password_from];
  if (!email || !password) throw new Error(`user: ${u.email_from}/${u.password_from} not in credentials`);
  const role = roleIds.get(u.role);
  if (!role) throw new Error(`user ${email}: no role named ${u.role} in the file`);
  const item = { email, password, role, status: 'active', first_name: u.first_name, last_name: u.last_name };
  const found = await api('GET', `/users?${q('email', email)}&fields=id`);
  if (found.length > 0) await api('PATCH', `/users/${found[0].id}`, item);
  else await api('POST', '/users', item);
}

// A collection's default view for everyone (no user, role or bookmark): replaced by the file's.
async function applyPreset(p) {
  const found = await api('GET', `/presets?${q('collection', p.collection)}&filter[user][_null]=true`
    + '&filter[role][_null]=true&filter[bookmark][_null]=true&fields=id');
  const item = { ...p, user: null, role: null, bookmark: null };
  if (found.length > 0) await api('PATCH', `/presets/${found[0].id}`, item);
  else await api('POST', '/presets', item);
}

try {
  const policyIds = new Map();
  for (const p of access.policies) policyIds.set(p.name, await applyPolicy(p));
  const roleIds = new Map();
  for (const r of access.roles) roleIds.set(r.name, await applyRole(r, policyIds));
  for (const u of access.users) await applyUser(u, roleIds);
  for (const p of access.presets ?? []) await applyPreset(p);
  console.error(`access: ${policyIds.size} policies, ${roleIds.size} roles, ${access.users.length} users, `
    + `${(access.presets ?? []).length} presets applied`);
} catch (e) {
  console.error(`access: ${e.message}`);
  process.exit(1);
}

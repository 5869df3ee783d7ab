// adopt.mjs DIR — makes the gateway's business tables (public.devices, device_state, commands:
// schema/postgres) Directus collections with what an operator expects of them, over REST with
// DIR's admin token. Only `make-snapshot.sh` runs it, against a throwaway Directus, to write
// schema/directus/snapshot.yaml; deployments apply that snapshot. Keep the two together: when
// a field changes here, run `directus/make-snapshot.sh` and commit both.
//
// Nothing here changes a column: the tables are the gateway's SQL. It adds Directus's metadata
// (interfaces, displays, notes, read-only flags, display templates) and the four audit
// relations to directus_users, which become foreign keys ON DELETE SET NULL.
import { adminApi } from './rest.mjs';

const dir = process.argv[2];
if (!dir) {
  console.error('usage: node adopt.mjs DIR');
  process.exit(2);
}
const api = adminApi(dir);

const ro = { readonly: true };
const imeiText = { interface: 'input', display: 'raw', options: { placeholder: '15-digit IMEI', font: 'monospace' },
  translations: [{ language: 'en-US', translation: 'IMEI' }] };
const when = { interface: 'datetime', display: 'datetime', display_options: { relative: true }, ...ro };
const audit = {
  date_created: { special: ['date-created'], ...when, hidden: true, width: 'half' },
  date_updated: { special: ['date-updated'], ...when, hidden: true, width: 'half' },
  user_created: { special: ['user-created'], interface: 'select-dropdown-m2o', display: 'user', ...ro, hidden: true, width: 'half',
    options: { template: '{{avatar.$thumbnail}} {{first_name}} {{last_name}}' } },
  user_updated: { special: ['user-updated'], interface: 'select-dropdown-m2o', display: 'user', ...ro, hidden: true, width: 'half',
    options: { template: '{{avatar.$thumbnail}} {{first_name}} {{last_name}}' } },
};
const statusLabels = [
  { text: 'pending', value: 'pending', foreground: '#FFFFFF', background: '#A2B5CD' },
  { text: 'sent', value: 'sent', foreground: '#FFFFFF', background: '#3399FF' },
  { text: 'answered', value: 'answered', foreground: '#FFFFFF', background: '#2ECDA7' },
  { text: 'failed', value: 'failed', foreground: '#FFFFFF', background: '#E35169' },
  { text: 'expired', value: 'expired', foreground: '#FFFFFF', background: '#FFA439' },
];

const collections = {
  devices: {
    meta: { icon: 'gps_fixed', note: 'Trackers known to the fleet (avlgate --devices known accepts only enabled ones)',
      display_template: '{{imei}} {{name}}', sort: 1 },
    fields: {
      imei: { ...imeiText, required: true, note: 'The tracker\'s IMEI', width: 'half' },
      name: { interface: 'input', display: 'raw', width: 'half' },
      enabled: { interface: 'boolean', display: 'boolean', special: ['cast-boolean'], width: 'half' },
      ...audit,
    },
  },
  device_state: {
    meta: { icon: 'my_location', note: 'Last known state per tracker, written by avlgate with the rows it describes',
      display_template: '{{imei}} {{last_ts}}', sort: 2 },
    fields: {
      imei: { ...imeiText, ...ro, width: 'half' },
      last_ts: { ...when, note: 'Newest record time stored', width: 'half' },
      last_lon: { interface: 'input', display: 'formatted-value', ...ro, width: 'half' },
      last_lat: { interface: 'input', display: 'formatted-value', ...ro, width: 'half' },
      last_received_at: { ...when, width: 'half' },
      instance: { interface: 'input', display: 'raw', ...ro, note: 'avlgate instance that wrote last', width: 'half' },
      shard: { interface: 'input', display: 'raw', ...ro, width: 'half' },
      dedup: { interface: 'input', hidden: true, ...ro, note: 'Opaque duplicate-detection state of avlgate; do not edit' },
      owner: { interface: 'input', hidden: true, ...ro, note: 'avlgate: the token of the gateway shard that may write this device now; do not edit' },
      updated_at: { ...when, width: 'half' },
    },
  },
  commands: {
    meta: { icon: 'send', note: 'Commands for trackers (Codec 12), delivered by avlgate',
      display_template: '{{imei}}: {{payload}} ({{status}})', sort: 3 },
    fields: {
      id: { interface: 'input', display: 'raw', ...ro, hidden: true, width: 'half' },
      imei: { ...imeiText, required: true, note: '15-digit IMEI of the tracker', width: 'half' },
      payload: { interface: 'input', display: 'raw', required: true, width: 'full',
        options: { font: 'monospace', placeholder: 'getinfo' }, note: 'Command text, 1 to 1024 bytes' },
      // formatted-value, not labels: 11.3.5's labels display fails on a text column.
      status: { interface: 'select-dropdown', display: 'formatted-value', ...ro, width: 'half',
        options: { choices: statusLabels.map(({ text, value }) => ({ text, value })) },
        display_options: { format: false, bold: true, conditionalFormatting: statusLabels.map(
          ({ value, foreground, background }) => ({ operator: 'eq', value, color: foreground, background })) } },
      response: { interface: 'input-multiline', display: 'raw', ...ro, width: 'full',
        options: { font: 'monospace' }, note: 'The tracker\'s answer' },
      response_hex: { interface: 'boolean', display: 'boolean', special: ['cast-boolean'], ...ro, width: 'half',
        note: 'The answer was not valid UTF-8: response holds its hex' },
      attempts: { interface: 'input', display: 'raw', ...ro, width: 'half' },
      expires_at: { interface: 'datetime', display: 'datetime', width: 'half', note: 'Empty: never expires' },
      sent_at: { ...when, width: 'half' },
      answered_at: { ...when, width: 'half' },
      ...audit,
    },
  },
};

try {
  for (const [name, c] of Object.entries(collections)) {
    await api('PATCH', `/collections/${name}`, { meta: c.meta });
    let sort = 1;
    for (const [field, meta] of Object.entries(c.fields)) {
      await api('PATCH', `/fields/${name}/${field}`, { meta: { ...meta, sort: sort++ } });
    }
    for (const field of ['user_created', 'user_updated']) {
      if (!c.fields[field]) continue;
      await api('POST', '/relations', { collection: name, field, related_collection: 'directus_users',
        schema: { on_delete: 'SET NULL' }, meta: { sort_field: null } });
    }
  }
  console.error(`adopt: ${Object.keys(collections).join(', ')}`);
} catch (e) {
  console.error(`adopt: ${e.message}`);
  process.exit(1);
}

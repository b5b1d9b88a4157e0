// The Vireo console: one page, drawn from vireod's console API (/console/api/...).
//
// Rule: everything that comes from the API (tags, names, ids, console output, messages) is put
// into the page as text (textContent / text nodes), never as markup; this file never assigns
// innerHTML. Every change sends the session's CSRF token in X-CSRF-Token.
'use strict';

// gen: counts page draws, so that a page left while it was still loading starts no timer.
const S = { csrf: null, session: null, timers: [], selected: new Set(), gen: 0 };

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  if (method !== 'GET' && S.csrf) opts.headers['X-CSRF-Token'] = S.csrf;
  const r = await fetch('/console/api/' + path, opts);
  let data = null;
  if (r.status !== 204) {
    try { data = await r.json(); } catch (_) { data = null; }
  }
  if (!r.ok) {
    const code = data && data.code ? data.code : String(r.status);
    const msg = data && data.message ? data.message : r.statusText;
    if (r.status === 401 && path !== 'signin' && S.session) {
      S.session = null;
      S.csrf = null;
      showSignIn('Your session has ended: sign in again.');
    }
    throw new ApiError(r.status, code, msg);
  }
  return data;
}

// el('td', {class: 'x'}, 'text', child): an element with attributes and children; strings become
// text nodes.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'value') e.value = v;
    else if (k === 'checked' || k === 'disabled' || k === 'selected' || k === 'multiple') e[k] = !!v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
function main() { return document.getElementById('main'); }
function stopTimers() { for (const t of S.timers) clearInterval(t); S.timers = []; }
function every(gen, ms, fn) { if (gen === S.gen) S.timers.push(setInterval(fn, ms)); }
function errorText(e) { return e instanceof ApiError ? e.code + ': ' + e.message : String(e); }
function showError(node, e) { node.textContent = errorText(e); }

function tagList(tags) {
  return el('span', {}, (tags || []).map(t => el('span', { class: 'tag' }, t.key + '=' + t.value)));
}

function table(cls, headers, rows) {
  return el('table', { class: cls },
    el('thead', {}, el('tr', {}, headers.map(h => el('th', {}, h)))),
    el('tbody', {}, rows));
}

function stateCell(state) {
  return el('span', { class: 'state state-' + state }, state);
}

// The confirmation every instance action needs: a modal dialog listing what it acts on.
function confirmAction(text, items) {
  const d = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  const ul = clear(document.getElementById('confirm-list'));
  for (const i of items) ul.append(el('li', {}, i));
  return new Promise(resolve => {
    const ok = document.getElementById('confirm-ok');
    const cancel = document.getElementById('confirm-cancel');
    const done = v => { ok.onclick = null; cancel.onclick = null; d.close(); resolve(v); };
    ok.onclick = () => done(true);
    cancel.onclick = () => done(false);
    d.oncancel = () => done(false);
    d.showModal();
  });
}

// ---- sign-in ----------------------------------------------------------------------------

function showSignIn(message) {
  stopTimers();
  document.getElementById('nav').hidden = true;
  document.getElementById('signout').hidden = true;
  document.getElementById('account').textContent = '';
  const err = el('p', { id: 'signin-error', class: 'error' }, message || '');
  const key = el('input', { id: 'access-key-id', name: 'access_key_id', autocomplete: 'username', required: true, spellcheck: 'false' });
  const secret = el('input', { id: 'secret-access-key', name: 'secret_access_key', type: 'password', autocomplete: 'current-password', required: true });
  const form = el('form', { class: 'card signin', id: 'signin-form' },
    el('h1', {}, 'Sign in'),
    el('label', { for: 'access-key-id' }, 'Access key ID'), key,
    el('label', { for: 'secret-access-key' }, 'Secret access key'), secret,
    el('p', {}, el('button', { type: 'submit', class: 'primary', id: 'signin-button' }, 'Sign in')),
    err);
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    err.textContent = '';
    try {
      const s = await api('POST', 'signin', { access_key_id: key.value.trim(), secret_access_key: secret.value });
      secret.value = '';
      signedIn(s);
      // Setting the hash routes (hashchange); routing here too would draw the page twice.
      if (!location.hash || location.hash === '#/' || location.hash === '#/signin') location.hash = '#/instances';
      else route();
    } catch (e) {
      showError(err, e);
    }
  });
  clear(main()).append(form);
}

function signedIn(s) {
  S.session = s;
  S.csrf = s.csrf_token;
  document.getElementById('nav').hidden = false;
  document.getElementById('signout').hidden = false;
  document.getElementById('account').textContent = 'account ' + s.account_id + ' · ' + s.region + ' · ' + s.access_key_id;
}

async function signOut() {
  try { await api('POST', 'signout'); } catch (_) { /* signed out either way */ }
  S.session = null;
  S.csrf = null;
  location.hash = '#/signin';
  showSignIn('Signed out.');
}

// ---- instances --------------------------------------------------------------------------

const ACTIONS = [
  ['start', 'Start'], ['stop', 'Stop'], ['hibernate', 'Hibernate'], ['reboot', 'Reboot'], ['terminate', 'Terminate'],
];

async function runAction(action, ids, status) {
  const label = ACTIONS.find(a => a[0] === action)[1];
  if (!await confirmAction(label + ' ' + ids.length + ' instance(s)?', ids)) return false;
  try {
    await api('POST', 'instances/action', { action, instance_ids: ids });
    status.className = 'notice';
    status.textContent = label + ' requested for ' + ids.join(', ');
    return true;
  } catch (e) {
    status.className = 'error';
    showError(status, e);
    return false;
  }
}

async function pageInstances() {
  const gen = S.gen;
  const status = el('p', { id: 'status', class: 'notice' });
  const stateSel = el('select', { id: 'filter-state' }, el('option', { value: '' }, 'any state'),
    ['pending', 'running', 'stopping', 'stopped', 'shutting-down', 'terminated'].map(s => el('option', { value: s }, s)));
  const typeSel = el('select', { id: 'filter-type' }, el('option', { value: '' }, 'any type'));
  const tagKey = el('input', { id: 'filter-tag-key', placeholder: 'tag key' });
  const tagValue = el('input', { id: 'filter-tag-value', placeholder: 'tag value (* ? wildcards)' });
  const body = el('tbody', { id: 'instance-rows' });
  const buttons = ACTIONS.map(([a, label]) => el('button', {
    type: 'button', id: 'action-' + a, class: a === 'terminate' ? 'danger' : '',
    onclick: async () => {
      const ids = [...S.selected];
      if (ids.length === 0) { status.className = 'error'; status.textContent = 'Select instances first.'; return; }
      if (await runAction(a, ids, status)) refresh();
    },
  }, label));
  const t = el('table', { id: 'instances' },
    el('thead', {}, el('tr', {}, ['', 'Instance', 'Name', 'State', 'Type', 'vCPUs', 'Memory (MiB)', 'Image', 'Private IP', 'Public IP', 'Launched', 'Tags'].map(h => el('th', {}, h)))),
    body);
  clear(main()).append(
    el('h1', {}, 'Instances'),
    el('div', { class: 'toolbar' }, stateSel, typeSel, tagKey, tagValue,
      el('button', { type: 'button', id: 'filter-apply', onclick: () => refresh() }, 'Filter')),
    el('div', { class: 'toolbar' }, buttons, el('a', { href: '#/launch' }, 'Launch instances')),
    status, t,
    el('p', { class: 'muted', id: 'updated' }));
  api('GET', 'instance-types').then(d => {
    for (const ty of d.instance_types) typeSel.append(el('option', { value: ty.name }, ty.name));
  }).catch(() => {});
  for (const inp of [stateSel, typeSel]) inp.addEventListener('change', () => refresh());
  for (const inp of [tagKey, tagValue]) inp.addEventListener('keydown', ev => { if (ev.key === 'Enter') refresh(); });

  async function refresh() {
    const q = new URLSearchParams();
    if (stateSel.value) q.set('state', stateSel.value);
    if (typeSel.value) q.set('instance_type', typeSel.value);
    if (tagKey.value) q.set('tag_key', tagKey.value);
    if (tagValue.value) q.set('tag_value', tagValue.value);
    let d;
    try {
      d = await api('GET', 'instances' + (q.toString() ? '?' + q : ''));
    } catch (e) {
      if (S.session) { status.className = 'error'; showError(status, e); }
      return;
    }
    const present = new Set(d.instances.map(i => i.instance_id));
    for (const id of [...S.selected]) if (!present.has(id)) S.selected.delete(id);
    const rows = d.instances.map(i => el('tr', { 'data-instance-id': i.instance_id },
      el('td', {}, el('input', {
        type: 'checkbox', checked: S.selected.has(i.instance_id), 'aria-label': 'select ' + i.instance_id,
        onchange: ev => { if (ev.target.checked) S.selected.add(i.instance_id); else S.selected.delete(i.instance_id); },
      })),
      el('td', {}, el('a', { href: '#/instance/' + encodeURIComponent(i.instance_id) }, i.instance_id)),
      el('td', {}, i.name || ''),
      el('td', { class: 'state-cell' }, stateCell(i.state)),
      el('td', {}, i.instance_type),
      el('td', { class: 'num' }, i.vcpus),
      el('td', { class: 'num' }, i.memory_mib),
      el('td', {}, i.image_id),
      el('td', {}, i.private_ip || ''),
      el('td', {}, i.public_ip || ''),
      el('td', {}, i.launch_time),
      el('td', {}, tagList(i.tags))));
    clear(body).append(...rows);
    if (rows.length === 0) body.append(el('tr', {}, el('td', { colspan: 12, class: 'muted' }, 'No instances match.')));
    document.getElementById('updated').textContent = 'Updated ' + new Date().toLocaleTimeString() + ' (every 2 s)';
  }
  await refresh();
  every(gen, 2000, refresh);
}

// A resource's tags, edited in place: each value with Save and Remove, and a row to add one.
function tagEditor(resourceId, tags, redraw, status) {
  async function call(path, body) {
    try {
      const r = await api('POST', path, body);
      redraw(r.tags);
      status.className = 'notice';
      status.textContent = 'Tags of ' + resourceId + ' saved.';
    } catch (e) { status.className = 'error'; showError(status, e); }
  }
  const rows = tags.map(t => {
    const value = el('input', { value: t.value, class: 'tag-value', 'aria-label': 'value of ' + t.key });
    return el('tr', { 'data-tag-key': t.key }, el('td', { class: 'tag-key' }, t.key), el('td', {}, value),
      el('td', {},
        el('button', { type: 'button', class: 'tag-save', onclick: () => call('tags', { resource_id: resourceId, tags: [{ key: t.key, value: value.value }] }) }, 'Save'),
        ' ',
        el('button', { type: 'button', class: 'tag-remove', onclick: () => call('tags/delete', { resource_id: resourceId, keys: [t.key] }) }, 'Remove')));
  });
  const newKey = el('input', { id: 'new-tag-key', placeholder: 'key', 'aria-label': 'new tag key' });
  const newValue = el('input', { id: 'new-tag-value', placeholder: 'value', 'aria-label': 'new tag value' });
  rows.push(el('tr', {}, el('td', {}, newKey), el('td', {}, newValue), el('td', {},
    el('button', { type: 'button', id: 'tag-add', onclick: () => call('tags', { resource_id: resourceId, tags: [{ key: newKey.value, value: newValue.value }] }) }, 'Add'))));
  return table('tags-edit', ['Key', 'Value', ''], rows);
}

async function pageInstance(id) {
  const gen = S.gen;
  const status = el('p', { id: 'status' });
  const attrs = el('dl', { class: 'attrs', id: 'attributes' });
  const tagBox = el('div', { id: 'tag-editor' });
  const out = el('pre', { class: 'console', id: 'console-output' });
  const buttons = ACTIONS.map(([a, label]) => el('button', {
    type: 'button', id: 'action-' + a, class: a === 'terminate' ? 'danger' : '',
    onclick: async () => { if (await runAction(a, [id], status)) refresh(); },
  }, label));
  clear(main()).append(
    el('p', {}, el('a', { href: '#/instances' }, '← Instances')),
    el('h1', {}, 'Instance ', el('span', { id: 'instance-id' }, id)),
    el('div', { class: 'toolbar' }, buttons), status, attrs,
    el('h2', {}, 'Tags'), tagBox,
    el('h2', {}, 'Console output'), el('p', { class: 'muted', id: 'console-stamp' }), out);

  // Drawn at first and after each change, not by the 2 s refresh (that would undo typing).
  let tagsDrawn = false;
  const drawTags = list => clear(tagBox).append(tagEditor(id, list, drawTags, status));
  function row(k, v) { return [el('dt', {}, k), el('dd', {}, v === null || v === undefined ? '' : v)]; }
  async function refresh() {
    let d;
    try { d = await api('GET', 'instances/' + encodeURIComponent(id)); } catch (e) { status.className = 'error'; showError(status, e); return; }
    clear(attrs).append(
      ...row('State', stateCell(d.state)),
      ...row('State reason', d.state_reason || ''),
      ...row('Name', d.name || ''),
      ...row('Type', d.instance_type + ' (' + d.vcpus + ' vCPUs, ' + d.memory_mib + ' MiB)'),
      ...row('Image', d.image_id),
      ...row('Launched', d.launch_time),
      ...row('Reservation', d.reservation_id + ' (launch index ' + d.launch_index + ')'),
      ...row('Zone', d.availability_zone),
      ...row('VPC / subnet', (d.vpc_id || '-') + ' / ' + (d.subnet_id || '-')),
      ...row('Private IP', d.private_ip || ''),
      ...row('Public IP', d.public_ip || ''),
      ...row('Security groups', d.security_groups.map(g => g.group_id + ' (' + g.group_name + ')').join(', ')),
      ...row('Interfaces', d.network_interfaces.join(', ')),
      ...row('Key pair', d.key_name || ''),
      ...row('Termination protection', String(d.disable_api_termination)),
      ...row('Stop protection', String(d.disable_api_stop)),
      ...row('Shutdown behaviour', d.shutdown_behavior),
      ...row('Metadata', 'tokens ' + d.http_tokens + ', endpoint ' + d.http_endpoint + ', hop limit ' + d.http_put_response_hop_limit),
      ...row('User data', d.user_data_bytes + ' bytes'));
    if (!tagsDrawn) { drawTags(d.tags); tagsDrawn = true; }
    try {
      const c = await api('GET', 'instances/' + encodeURIComponent(id) + '/console');
      const follow = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
      if (out.textContent !== c.output) out.textContent = c.output;
      if (follow) out.scrollTop = out.scrollHeight;
      document.getElementById('console-stamp').textContent = 'As of ' + c.timestamp + ' (last 64 KiB, updated every 2 s)';
    } catch (e) {
      document.getElementById('console-stamp').textContent = errorText(e);
    }
  }
  await refresh();
  every(gen, 2000, refresh);
}

// ---- launch -----------------------------------------------------------------------------

async function pageLaunch() {
  const status = el('p', { id: 'status' });
  const image = el('select', { id: 'launch-image', required: true });
  const type = el('select', { id: 'launch-type', required: true });
  const count = el('input', { id: 'launch-count', type: 'number', min: 1, max: 1000, value: '1', required: true });
  const userData = el('textarea', { id: 'launch-user-data', placeholder: '#!/bin/sh …', spellcheck: 'false' });
  const key = el('select', { id: 'launch-key' }, el('option', { value: '' }, '(no key pair)'));
  const subnet = el('select', { id: 'launch-subnet' }, el('option', { value: '' }, '(default subnet)'));
  const groups = el('div', { class: 'checks', id: 'launch-groups' });
  const form = el('form', { class: 'card', id: 'launch-form' },
    el('label', { for: 'launch-image' }, 'Image'), image,
    el('label', { for: 'launch-type' }, 'Instance type'), type,
    el('label', { for: 'launch-count' }, 'Count'), count,
    el('label', { for: 'launch-key' }, 'Key pair'), key,
    el('label', { for: 'launch-subnet' }, 'Subnet'), subnet,
    el('label', {}, 'Security groups (none: the VPC\'s default group)'), groups,
    el('label', { for: 'launch-user-data' }, 'User data'), userData,
    el('p', {}, el('button', { type: 'submit', class: 'primary', id: 'launch-button' }, 'Launch')),
    status);
  clear(main()).append(el('h1', {}, 'Launch instances'), form);
  let subnets = [];
  let sgs = [];
  try {
    const [im, ty, kp, sn, sg] = await Promise.all([
      api('GET', 'images'), api('GET', 'instance-types'), api('GET', 'key-pairs'), api('GET', 'subnets'), api('GET', 'security-groups')]);
    for (const i of im.images.filter(i => i.state === 'available')) image.append(el('option', { value: i.image_id }, i.image_id + ' — ' + i.name));
    for (const t of ty.instance_types) type.append(el('option', { value: t.name, selected: t.name === 't3.micro' }, t.name + ' — ' + t.vcpus + ' vCPUs, ' + t.memory_mib + ' MiB'));
    for (const k of kp.key_pairs) key.append(el('option', { value: k.key_name }, k.key_name));
    subnets = sn.subnets;
    for (const s of subnets) subnet.append(el('option', { value: s.subnet_id }, s.subnet_id + ' — ' + s.cidr_block + ' in ' + s.vpc_id + (s.default_for_az ? ' (default)' : '')));
    sgs = sg.security_groups;
  } catch (e) { status.className = 'error'; showError(status, e); }
  function drawGroups() {
    const s = subnets.find(s => s.subnet_id === subnet.value) || subnets.find(s => s.default_for_az);
    const vpc = s ? s.vpc_id : null;
    clear(groups).append(...sgs.filter(g => !vpc || g.vpc_id === vpc).map(g =>
      el('label', {}, el('input', { type: 'checkbox', value: g.group_id, name: 'group' }), g.group_id + ' — ' + g.group_name)));
  }
  subnet.addEventListener('change', drawGroups);
  drawGroups();
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    status.className = '';
    status.textContent = 'Launching…';
    try {
      const r = await api('POST', 'instances', {
        image_id: image.value, instance_type: type.value, count: Number(count.value), user_data: userData.value,
        key_name: key.value || null, subnet_id: subnet.value || null,
        security_group_ids: [...groups.querySelectorAll('input:checked')].map(i => i.value),
      });
      status.className = 'notice';
      clear(status).append('Launched ', ...r.instance_ids.flatMap((id, n) => [n ? ', ' : '', el('a', { href: '#/instance/' + encodeURIComponent(id) }, id)]));
    } catch (e) { status.className = 'error'; showError(status, e); }
  });
}

// ---- images, types, key pairs, VPCs, groups ---------------------------------------------

async function pageImages() {
  const d = await api('GET', 'images');
  clear(main()).append(el('h1', {}, 'Images'), table('', ['Image', 'Name', 'Description', 'State', 'Architecture', 'Created', 'Tags'],
    d.images.map(i => el('tr', { 'data-image-id': i.image_id }, el('td', {}, i.image_id), el('td', {}, i.name), el('td', {}, i.description),
      el('td', {}, i.state), el('td', {}, i.architecture), el('td', {}, i.creation_date), el('td', { class: 'tags' }, tagList(i.tags))))));
}

async function pageTypes() {
  const d = await api('GET', 'instance-types');
  clear(main()).append(el('h1', {}, 'Instance types'), table('', ['Type', 'vCPUs', 'Memory (MiB)', 'Burstable'],
    d.instance_types.map(t => el('tr', {}, el('td', {}, t.name), el('td', { class: 'num' }, t.vcpus), el('td', { class: 'num' }, t.memory_mib), el('td', {}, t.burstable ? 'yes' : 'no')))));
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: 'application/x-pem-file' }));
  const a = el('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function pageKeyPairs() {
  const status = el('p', { id: 'status' });
  const name = el('input', { id: 'key-name', required: true, maxlength: 255 });
  const kind = el('select', { id: 'key-type' }, el('option', { value: 'ed25519' }, 'ed25519'), el('option', { value: 'rsa' }, 'rsa (2048 bits)'));
  const created = el('div', { id: 'created-key' });
  const body = el('tbody', { id: 'key-rows' });
  const form = el('form', { class: 'card', id: 'key-form' },
    el('label', { for: 'key-name' }, 'Name'), name, el('label', { for: 'key-type' }, 'Type'), kind,
    el('p', {}, el('button', { type: 'submit', class: 'primary', id: 'key-create' }, 'Create key pair')), status, created);
  clear(main()).append(el('h1', {}, 'Key pairs'), table('', ['Name', 'ID', 'Type', 'Fingerprint', 'Created', 'Tags', ''], [body]), el('h2', {}, 'Create a key pair'), form);
  async function refresh() {
    const d = await api('GET', 'key-pairs');
    clear(body).append(...d.key_pairs.map(k => el('tr', {}, el('td', {}, k.key_name), el('td', {}, k.key_pair_id), el('td', {}, k.key_type),
      el('td', {}, k.fingerprint), el('td', {}, k.create_time), el('td', {}, tagList(k.tags)),
      el('td', {}, el('button', {
        type: 'button', class: 'danger', onclick: async () => {
          if (!await confirmAction('Delete this key pair? Instances launched with it keep its key.', [k.key_name])) return;
          try { await api('POST', 'key-pairs/delete', { key_name: k.key_name }); refresh(); } catch (e) { status.className = 'error'; showError(status, e); }
        },
      }, 'Delete')))));
  }
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    clear(created);
    status.textContent = '';
    try {
      const k = await api('POST', 'key-pairs', { key_name: name.value, key_type: kind.value });
      const file = k.key_name.replace(/[^A-Za-z0-9._-]/g, '_') + '.pem';
      download(file, k.private_key);
      status.className = 'notice';
      status.textContent = 'Created ' + k.key_pair_id + '. Its private key was downloaded as ' + file + '; vireod keeps no copy, so it is shown only this once:';
      created.append(el('textarea', { class: 'key', readonly: true, id: 'private-key' }, k.private_key));
      name.value = '';
      refresh();
    } catch (e) { status.className = 'error'; showError(status, e); }
  });
  await refresh();
}

async function pageVpcs() {
  const [v, s] = await Promise.all([api('GET', 'vpcs'), api('GET', 'subnets')]);
  clear(main()).append(el('h1', {}, 'VPCs'),
    table('', ['VPC', 'CIDR', 'Default', 'DNS support', 'DNS hostnames', 'Tags'],
      v.vpcs.map(x => el('tr', { 'data-vpc-id': x.vpc_id }, el('td', {}, x.vpc_id), el('td', {}, x.cidr_block), el('td', {}, x.is_default ? 'yes' : 'no'),
        el('td', {}, String(x.enable_dns_support)), el('td', {}, String(x.enable_dns_hostnames)), el('td', { class: 'tags' }, tagList(x.tags))))),
    el('h2', {}, 'Subnets'),
    table('', ['Subnet', 'VPC', 'CIDR', 'Zone', 'Free addresses', 'Default', 'Public IP on launch', 'Tags'],
      s.subnets.map(x => el('tr', {}, el('td', {}, x.subnet_id), el('td', {}, x.vpc_id), el('td', {}, x.cidr_block), el('td', {}, x.availability_zone),
        el('td', { class: 'num' }, x.available_ip_address_count), el('td', {}, x.default_for_az ? 'yes' : 'no'), el('td', {}, x.map_public_ip_on_launch ? 'yes' : 'no'), el('td', {}, tagList(x.tags))))));
}

function ports(r) {
  if (r.protocol === '-1') return 'all';
  if (r.from_port === r.to_port) return String(r.from_port);
  return r.from_port + '–' + r.to_port;
}

async function pageGroups() {
  const d = await api('GET', 'security-groups');
  const m = clear(main());
  m.append(el('h1', {}, 'Security groups'));
  for (const g of d.security_groups) {
    m.append(el('h2', {}, g.group_id + ' — ' + g.group_name + ' (' + g.vpc_id + ')'),
      el('p', { class: 'muted' }, g.description), tagList(g.tags),
      table('', ['Direction', 'Rule', 'Protocol', 'Ports', 'Peer', 'Description'],
        g.rules.map(r => el('tr', {}, el('td', {}, r.egress ? 'egress' : 'ingress'), el('td', {}, r.rule_id),
          el('td', {}, r.protocol === '-1' ? 'all' : r.protocol), el('td', {}, ports(r)), el('td', {}, r.peer), el('td', {}, r.description)))));
  }
}

// ---- routing ----------------------------------------------------------------------------

const PAGES = {
  instances: pageInstances, launch: pageLaunch, images: pageImages, 'instance-types': pageTypes,
  'key-pairs': pageKeyPairs, vpcs: pageVpcs, 'security-groups': pageGroups,
};

// Draws the page the hash names. When it is drawn, body[data-ready] names it (tests wait for
// it) and body[data-draw-ms] says how long it took from the route's start, and
// body[data-ready-at] from the document's navigation start (the console benchmark reads both).
async function route() {
  stopTimers();
  const gen = ++S.gen;
  const started = performance.now();
  document.body.removeAttribute('data-ready');
  if (!S.session) { showSignIn(); document.body.setAttribute('data-ready', 'signin'); return; }
  const parts = location.hash.replace(/^#\/?/, '').split('/');
  const page = parts[0] || 'instances';
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === page);
  try {
    if (page === 'instance' && parts[1]) await pageInstance(decodeURIComponent(parts[1]));
    else await (PAGES[page] || pageInstances)();
  } catch (e) {
    if (S.session && gen === S.gen) clear(main()).append(el('p', { class: 'error', id: 'page-error' }, errorText(e)));
  }
  if (gen === S.gen) {
    const now = performance.now();
    document.body.setAttribute('data-draw-ms', (now - started).toFixed(1));
    document.body.setAttribute('data-ready-at', now.toFixed(1));
    document.body.setAttribute('data-ready', S.session ? (parts[0] || 'instances') : 'signin');
  }
}

async function start() {
  document.getElementById('signout').addEventListener('click', signOut);
  window.addEventListener('hashchange', route);
  try {
    signedIn(await api('GET', 'session'));
  } catch (_) {
    S.session = null;
  }
  route();
}

start();

// The baseline for scripts/bench-vs-node: on-webhook's CallRail intake checks, written the way a user would on
// Google's Node.js Functions Framework. It does the same verify-and-parse work as
// functions/on-webhook/src/intake.rs, in the same order, with the same answers:
//
//   POST /webhooks/callrail/{tenant}
//   wrong method 405 · unknown or invalid tenant 404 · content type not application/json 415 · body over 1 MiB 413 ·
//   no signing key 401 · Signature (Base64 HMAC-SHA1 of the raw body, any of the tenant's keys, constant-time
//   compare) missing/malformed/wrong 401, or 429 after 30 failures a minute from one address · body not a JSON
//   object, no call id, no company id 400 · company not the tenant's 403 · accepted 200
//   {"status":"accepted","call_id":…,"duplicate":false,"state":"received"}
//
// Tenants come from the same TOML file as on-webhook's (CALLFLOW_TENANTS, default fixtures/tenants.toml), secrets
// from the same `file:`/`env:` references, re-read after 60 s like on-webhook's cache. What it does NOT do, and
// on-webhook does on every request: the durable write (dedupe ledger, call row, outbox work and analytics row in
// one fsynced SQLite transaction) and the "webhook accepted" log line. So the comparison is conservative for Rust.
//
// Run: npx functions-framework --target=callrail --port=8080   (or: npm start)

'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const functions = require('@google-cloud/functions-framework');
const TOML = require('smol-toml');

const MAX_BODY_BYTES = 1024 * 1024;
const SECRET_TTL_MS = 60_000;
const AUTH_FAILURES_PER_MINUTE = Number(process.env.CALLFLOW_AUTH_FAILURES_PER_MINUTE || 30);
const TENANTS_FILE = path.resolve(
  process.env.CALLFLOW_TENANTS || path.join(__dirname, '..', '..', 'fixtures', 'tenants.toml'),
);

// ---- tenants and secrets ---------------------------------------------------------------------------------------

/** Tenant id → { id, companyIds: Set, signingKeys: [ref] }, read once at start (like on-webhook's directory). */
const tenants = new Map();
for (const t of TOML.parse(fs.readFileSync(TENANTS_FILE, 'utf8')).tenant || []) {
  tenants.set(t.id, {
    id: t.id,
    companyIds: new Set((t.callrail && t.callrail.company_ids) || []),
    signingKeys: (t.callrail && t.callrail.signing_keys) || [],
  });
}

const secretCache = new Map(); // ref → { value, at }

/** A `file:` (relative to the tenants file) or `env:` reference; null when it cannot be read (fail closed). */
function secret(ref) {
  const hit = secretCache.get(ref);
  const now = Date.now();
  if (hit && now - hit.at < SECRET_TTL_MS) return hit.value;
  let value = null;
  try {
    if (ref.startsWith('file:')) {
      value = fs.readFileSync(path.resolve(path.dirname(TENANTS_FILE), ref.slice(5)), 'utf8').trim();
    } else if (ref.startsWith('env:')) {
      value = process.env[ref.slice(4)] ?? null;
    }
  } catch (e) {
    console.error(JSON.stringify({ severity: 'ERROR', message: 'signing key unavailable; rejecting', ref }));
  }
  if (value === '') value = null;
  secretCache.set(ref, { value, at: now });
  return value;
}

// ---- checks ------------------------------------------------------------------------------------------------------

const PATH_SAFE = /^[A-Za-z0-9_-]+$/;
const validTenantId = s => s.length <= 63 && PATH_SAFE.test(s) && !/[A-Z]/.test(s) && !s.startsWith('-');
const validCallId = s => s.length <= 64 && PATH_SAFE.test(s);
const STRICT_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Failed signature checks per source address in the current minute (on-webhook: a keyed rate limiter). */
let failures = new Map();
let failuresMinute = 0;
function tooManyFailures(ip) {
  const minute = Math.floor(Date.now() / 60_000);
  if (minute !== failuresMinute) {
    failures = new Map();
    failuresMinute = minute;
  }
  const n = (failures.get(ip) || 0) + 1;
  failures.set(ip, n);
  return n > AUTH_FAILURES_PER_MINUTE;
}

/** CallRail's signature: Base64 HMAC-SHA1 of the raw body with any active key, compared in constant time. */
function verifyCallrail(keys, body, header) {
  if (keys.length === 0) return 'no signing key is configured for this tenant';
  if (header === undefined) return 'signature header is missing';
  const sig = header.trim();
  if (!STRICT_BASE64.test(sig)) return 'invalid signature';
  const expected = Buffer.from(sig, 'base64');
  if (expected.length !== 20) return 'invalid signature';
  for (const key of keys) {
    const mac = crypto.createHmac('sha1', key).update(body).digest();
    if (crypto.timingSafeEqual(mac, expected)) return null;
  }
  return 'invalid signature';
}

// CallRail sends ids as numbers or strings, numbers as strings, "" for absent: normalise as on-webhook does.
const optId = v =>
  typeof v === 'string' && v.trim() !== '' ? v.trim() : typeof v === 'number' ? String(v) : null;
const optText = v => (typeof v === 'string' && v !== '' ? v : typeof v === 'number' ? String(v) : null);
function optU32(v) {
  const n = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v.trim()) : NaN;
  return Number.isFinite(n) ? Math.min(Math.round(Math.max(n, 0)), 0xffffffff) : null;
}
function optBool(v) {
  if (typeof v === 'boolean') return v;
  if (v === 'true' || v === '1') return true;
  if (v === 'false' || v === '0') return false;
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v !== 0;
  return null;
}
function tags(v) {
  if (Array.isArray(v)) {
    return v
      .map(t => (typeof t === 'string' ? t : t && typeof t === 'object' && typeof t.name === 'string' ? t.name : ''))
      .filter(s => s !== '');
  }
  if (typeof v === 'string') return v.split(',').map(s => s.trim()).filter(s => s !== '');
  return [];
}

/** The lead fields on-webhook stores with the call (CallRailWebhook::lead_details). */
function leadDetails(p) {
  return {
    company_id: optId(p.company_resource_id) ?? optId(p.company_id),
    answered: optBool(p.answered),
    voicemail: optBool(p.voicemail),
    direction: optText(p.direction),
    call_type: optText(p.call_type),
    duration_secs: optU32(p.duration),
    start_time: optText(p.start_time),
    customer_name: optText(p.customer_name),
    customer_phone: optText(p.customer_phone_number),
    customer_city: optText(p.customer_city),
    customer_state: optText(p.customer_state),
    customer_country: optText(p.customer_country),
    tracking_phone_number: optText(p.tracking_phone_number),
    source_name: optText(p.source_name),
    recording_url: optText(p.recording),
    recording_duration_secs: optU32(p.recording_duration),
    transcription: optText(p.transcription),
    lead_status: optText(p.lead_status),
    tags: tags(p.tags),
    utm_source: optText(p.utm_source),
    utm_medium: optText(p.utm_medium),
    utm_campaign: optText(p.utm_campaign),
    utm_term: optText(p.utm_term),
    utm_content: optText(p.utm_content),
    gclid: optText(p.gclid),
    landing_page_url: optText(p.landing_page_url),
    referring_url: optText(p.referring_url),
  };
}

// ---- the function ------------------------------------------------------------------------------------------------

class Rejection {
  constructor(status, code, message, headers) {
    Object.assign(this, { status, code, message, headers });
  }
}
const reject = (status, code, message, headers) => {
  throw new Rejection(status, code, message, headers);
};

/** The intake event on-webhook would record (here it is only built, not stored). */
let lastEvent = null;

function intake(req) {
  const m = /^\/webhooks\/callrail\/([^/]+)$/.exec(req.path);
  if (!m) reject(404, 'not_found', 'no such endpoint');
  if (req.method !== 'POST') reject(405, 'method_not_allowed', 'method not allowed', { Allow: 'POST' });
  const tenant = validTenantId(m[1]) ? tenants.get(m[1]) : undefined;
  if (!tenant) reject(404, 'not_found', 'unknown tenant');
  const type = (req.get('content-type') || '').split(';')[0].trim().toLowerCase();
  if (type !== 'application/json') reject(415, 'unsupported_media_type', 'expected application/json');
  const body = req.rawBody || Buffer.alloc(0);
  if (Number(req.get('content-length') || 0) > MAX_BODY_BYTES || body.length > MAX_BODY_BYTES) {
    reject(413, 'payload_too_large', `body exceeds ${MAX_BODY_BYTES} bytes`);
  }

  const keys = tenant.signingKeys.map(secret).filter(k => k !== null);
  const failed = verifyCallrail(keys, body, req.get('signature'));
  if (failed) {
    if (tooManyFailures(req.ip)) reject(429, 'rate_limited', 'too many requests', { 'Retry-After': '60' });
    reject(401, 'unauthorized', failed);
  }

  // The Functions Framework has already parsed the JSON (body-parser, which keeps the raw bytes as rawBody).
  const p = req.body;
  if (p === null || typeof p !== 'object' || Array.isArray(p) || Buffer.isBuffer(p)) {
    reject(400, 'bad_request', 'body is not a JSON object');
  }
  const callId = optId(p.resource_id) ?? optId(p.id);
  if (callId === null) reject(400, 'bad_request', 'payload has neither resource_id nor id');
  if (!validCallId(callId)) reject(400, 'bad_request', `invalid call id ${JSON.stringify(callId.slice(0, 80))}`);
  const companies = [optId(p.company_resource_id), optId(p.company_id)].filter(c => c !== null);
  if (companies.length === 0) reject(400, 'bad_request', 'payload has neither company_resource_id nor company_id');
  if (!companies.some(c => tenant.companyIds.has(c))) {
    reject(403, 'forbidden', "the payload's company does not belong to this tenant");
  }
  const digest = crypto.createHash('sha256').update(body).digest('hex');
  const callModified = p.changes !== undefined && p.changes !== null;
  lastEvent = {
    tenant_id: tenant.id,
    call_id: callId,
    source: 'callrail',
    kind: callModified ? 'call_modified' : 'post_call',
    dedupe_key: callModified ? `call_modified:${digest}` : 'post_call',
    payload_sha256: digest,
    payload_bytes: body.length,
    lead: leadDetails(p),
    received_at: new Date().toISOString(),
  };
  return { status: 'accepted', call_id: callId, duplicate: false, state: 'received' };
}

function callrail(req, res) {
  try {
    res.status(200).json(intake(req));
  } catch (e) {
    if (!(e instanceof Rejection)) throw e;
    if (e.status !== 429) {
      console.error(
        JSON.stringify({
          severity: 'WARNING',
          message: 'webhook rejected',
          path: req.path,
          source_ip: req.ip,
          status: e.status,
          code: e.code,
          reason: e.message,
        }),
      );
    }
    if (e.headers) res.set(e.headers);
    res.status(e.status).json({ error: { code: e.code, message: e.message } });
  }
}

functions.http('callrail', callrail);
module.exports = { callrail, lastEvent: () => lastEvent };

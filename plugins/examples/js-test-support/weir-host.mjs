// A mock Weir host for running a policy's JavaScript in Node (`node --test`).
//
// Registered with `register("./weir-host.mjs", import.meta.url)`, it resolves every
// `weir:policy/<interface>@0.1.0` import to this module, whose default export is that interface
// backed by the in-memory `host` below. Values follow the component's JavaScript mapping: WIT
// option = value or null, result = return value or throw, list<u8> = Uint8Array.

/** Module resolution hook (runs in Node's loader thread). */
export async function resolve(specifier, context, next) {
  const m = /^weir:policy\/([a-z-]+)(@[0-9.]+)?$/.exec(specifier);
  if (m) {
    const url = new URL(import.meta.url);
    url.search = `?iface=${m[1]}`;
    return { url: url.href, shortCircuit: true };
  }
  return next(specifier, context);
}

function createHost() {
  const host = {
    /** `[level, message, fields]` of every log call. */
    logs: [],
    /** Request context (string → string). */
    context: new Map(),
    /** kv store (string → Uint8Array). */
    kv: new Map(),
    /** `[name, labels, value]` of every metric call. */
    metrics: [],
    /** Remaining quota per `name/key` of the rate limiter. */
    limits: new Map(),
    /** Programmed JWT verdicts: token → claims object (absent = rejected as bad-signature). */
    jwt: new Map(),
    /** Programmed outbound responses: url → { status, headers, body }. */
    http: new Map(),
    reset() {
      for (const k of ["logs", "metrics"]) host[k].length = 0;
      for (const k of ["context", "kv", "limits", "jwt", "http"]) host[k].clear();
    },
  };
  const ok = (v) => v;
  host.interfaces = {
    log: { log: (level, message, fields) => void host.logs.push([level, message, fields]) },
    context: {
      get: (k) => (host.context.has(k) ? host.context.get(k) : null),
      set: (k, v) => void host.context.set(k, v),
      remove: (k) => void host.context.delete(k),
      entries: () => [...host.context.entries()],
    },
    kv: {
      get: (k) => ok(host.kv.has(k) ? host.kv.get(k) : null),
      set: (k, v) => void host.kv.set(k, v),
      delete: (k) => host.kv.delete(k),
      increment: (k, delta) => {
        const now = Number(new TextDecoder().decode(host.kv.get(k) ?? new Uint8Array())) || 0;
        host.kv.set(k, new TextEncoder().encode(String(now + delta)));
        return now + delta;
      },
      compareAndSwap: (k, expected, value) => {
        const cur = host.kv.get(k) ?? null;
        const same = cur === null || expected === null ? cur === expected : cur.join() === expected.join();
        if (same) host.kv.set(k, value);
        return same;
      },
    },
    "rate-limit": {
      check: (name, key, quota, cost) => {
        const id = `${name}/${key}`;
        const left = host.limits.has(id) ? host.limits.get(id) : quota.limit;
        const allowed = left >= cost;
        host.limits.set(id, allowed ? left - cost : left);
        return {
          allowed,
          limit: quota.limit,
          remaining: allowed ? left - cost : left,
          resetMs: quota.windowMs,
          retryAfterMs: allowed ? 0 : quota.windowMs,
        };
      },
    },
    jwt: {
      verify: (token) => {
        if (!host.jwt.has(token)) throw { tag: "bad-signature" };
        return JSON.stringify(host.jwt.get(token));
      },
    },
    "http-client": {
      send: (req) => {
        if (!host.http.has(req.url)) throw `no mock response for ${req.url}`;
        return host.http.get(req.url);
      },
      sendAll: (reqs) =>
        reqs.map((r) =>
          host.http.has(r.url) ? { tag: "ok", val: host.http.get(r.url) } : { tag: "err", val: `no mock response for ${r.url}` },
        ),
    },
    metrics: {
      counterAdd: (name, labels, value) => void host.metrics.push([name, labels, value]),
      histogramObserve: (name, labels, value) => void host.metrics.push([name, labels, value]),
    },
  };
  return host;
}

/** One host per process, shared by every import of this module. */
export const host = (globalThis.__weirMockHost ??= createHost());

/** A request record as the gateway passes it to `onRequest`. */
export function request(method, path, headers = [], body = null) {
  const [p, q] = path.split("?");
  return {
    method,
    path: p,
    query: q ?? null,
    headers,
    body: typeof body === "string" ? new TextEncoder().encode(body) : body,
    clientIp: "127.0.0.1",
    route: "test",
    requestId: "test-request",
    scheme: "http",
    host: "localhost",
  };
}

const iface = new URL(import.meta.url).searchParams.get("iface");
export default iface ? host.interfaces[iface] : host;

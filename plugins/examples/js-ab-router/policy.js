// js-ab-router: sticky A/B routing, written in JavaScript.
//
// Each request is assigned a variant from a hash of the experiment name and a stable user key
// (a cookie, else a header, else the client address), so a user always sees the same variant
// while the weights hold. The variant goes upstream as a header, can prefix the path (e.g. to
// reach `/v2/...` of a new service version) and comes back to the client as a response header.
import context from "weir:policy/context@0.1.0";
import log from "weir:policy/log@0.1.0";

let cfg = null;

/** Validates the config: `{ experiment, variants: [{ name, weight, path_prefix? }], ... }`. */
export function init(config) {
  const c = JSON.parse(config || "{}");
  const known = ["experiment", "variants", "cookie", "header", "variant_header", "override_header"];
  for (const key of Object.keys(c)) {
    if (!known.includes(key)) throw `unknown config key \`${key}\``;
  }
  if (typeof c.experiment !== "string" || c.experiment === "") throw "`experiment` must be a non-empty string";
  if (!Array.isArray(c.variants) || c.variants.length < 2) throw "`variants` needs at least two entries";
  let total = 0;
  const variants = c.variants.map((v, i) => {
    const at = `variants[${i}]`;
    if (typeof v.name !== "string" || !/^[a-z0-9_-]+$/i.test(v.name)) throw `${at}.name must be letters, digits, - or _`;
    const weight = v.weight ?? 1;
    if (!Number.isInteger(weight) || weight < 0 || weight > 10000) throw `${at}.weight must be an integer 0..10000`;
    const prefix = v.path_prefix ?? null;
    if (prefix !== null && (typeof prefix !== "string" || !prefix.startsWith("/") || prefix.endsWith("/"))) {
      throw `${at}.path_prefix must start with / and not end with /`;
    }
    total += weight;
    return { name: v.name, weight, prefix };
  });
  if (total === 0) throw "the variants' weights add up to 0";
  cfg = {
    experiment: c.experiment,
    variants,
    total,
    cookie: c.cookie ?? "ab_user",
    header: (c.header ?? "x-user-id").toLowerCase(),
    variantHeader: (c.variant_header ?? "x-variant").toLowerCase(),
    // Lets testers force a variant; off unless configured.
    overrideHeader: c.override_header ? c.override_header.toLowerCase() : null,
  };
  return { needsRequestBody: false, needsResponseBody: false };
}

/** FNV-1a, 32 bit: fast, stable across engines, good enough to spread users over buckets. */
function fnv1a(s) {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

function header(req, name) {
  const h = req.headers.find(([k]) => k === name);
  return h ? h[1] : null;
}

function cookie(req, name) {
  for (const [k, v] of req.headers) {
    if (k !== "cookie") continue;
    for (const part of v.split(";")) {
      const eq = part.indexOf("=");
      if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
    }
  }
  return null;
}

/** The variant for a user key: buckets of the weights' size, in config order. */
export function pick(key) {
  let bucket = fnv1a(`${cfg.experiment}:${key}`) % cfg.total;
  for (const v of cfg.variants) {
    if (bucket < v.weight) return v;
    bucket -= v.weight;
  }
  return cfg.variants[cfg.variants.length - 1];
}

export function onRequest(req) {
  const forced = cfg.overrideHeader && header(req, cfg.overrideHeader);
  let variant = forced ? cfg.variants.find((v) => v.name === forced) : null;
  if (!variant) {
    const key = cookie(req, cfg.cookie) ?? header(req, cfg.header) ?? req.clientIp;
    variant = pick(key);
  }
  context.set("ab.variant", variant.name);
  log.log("debug", "variant chosen", [["experiment", cfg.experiment], ["variant", variant.name]]);
  const edits = { setHeaders: [[cfg.variantHeader, variant.name]] };
  if (variant.prefix) edits.path = variant.prefix + (req.path === "/" ? "" : req.path);
  return { tag: "continue", val: edits };
}

/** Tells the client (and caches, via `vary`) which variant answered. */
export function onResponse() {
  const name = context.get("ab.variant");
  if (name === null) return {};
  return { setHeaders: [[cfg.variantHeader, name]], appendHeaders: [["vary", "cookie"]] };
}

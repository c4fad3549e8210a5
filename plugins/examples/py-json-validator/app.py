"""py-json-validator: JSON body checks, written in Python.

For the configured methods (POST, PUT and PATCH by default), the request body must be a JSON
object with every `required` field present and, where `types` names one, of that JSON type.
A body that is not JSON is answered with 400, a missing or mistyped field with 422; both as
RFC 9457 problem+json naming the fields. The plugin declares `needs-request-body`, so the
gateway buffers the body (up to the route's limit) before calling it.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import log
from wit_world.imports.types import (
    Action,
    Action_Continue,
    Action_Respond,
    LogEntry,
    Phases,
    PluginInfo,
    Request,
    RequestEdits,
    Response,
    ResponseEdits,
    ResponseHead,
)

# JSON type names → the Python types json.loads produces (bool is not a number here).
_TYPES = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}

# Settings from the route's `config` table (module state lives as long as the instance).
_required: list[str] = []
_types: dict[str, str] = {}
_methods: set[str] = {"POST", "PUT", "PATCH"}


def _type_ok(value, name: str) -> bool:
    if isinstance(value, bool) and name in ("number", "integer"):
        return False
    return isinstance(value, _TYPES[name])


def _problem(status: int, title: str, detail: str, **extra) -> Action:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    log.log(log.Level.INFO, "request refused", [("status", str(status)), ("detail", detail)])
    return Action_Respond(
        Response(
            status=status,
            headers=[("content-type", "application/problem+json")],
            body=json.dumps(body).encode(),
        )
    )


def _continue() -> Action:
    return Action_Continue(
        RequestEdits(
            method=None,
            path=None,
            query=None,
            set_headers=[],
            append_headers=[],
            remove_headers=[],
            body=None,
            set_response_headers=[],
            append_response_headers=[],
        )
    )


def check(body: bytes | None) -> Action:
    """The decision for one body (the whole policy, without the phase plumbing)."""
    try:
        doc = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError) as e:
        return _problem(400, "invalid JSON", f"the body is not JSON: {e}")
    if not isinstance(doc, dict):
        return _problem(422, "invalid body", "the body must be a JSON object")
    missing = [f for f in _required if f not in doc]
    if missing:
        detail = "missing required field(s): " + ", ".join(missing)
        return _problem(422, "missing fields", detail, fields=missing)
    wrong = [f for f, t in _types.items() if f in doc and not _type_ok(doc[f], t)]
    if wrong:
        detail = "; ".join(f"`{f}` must be a {_types[f]}" for f in wrong)
        return _problem(422, "invalid fields", detail, fields=wrong)
    return _continue()


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> PluginInfo:
        global _required, _types, _methods
        cfg = json.loads(config or "{}")
        unknown = sorted(set(cfg) - {"required", "types", "methods"})
        if unknown:
            raise Err(f"unknown config key `{unknown[0]}`")
        required = cfg.get("required", [])
        if not isinstance(required, list) or not all(isinstance(f, str) and f for f in required):
            raise Err("`required` must be a list of field names")
        types = cfg.get("types", {})
        if not isinstance(types, dict):
            raise Err("`types` must be a table of field = type")
        for field, t in types.items():
            if t not in _TYPES:
                raise Err(f"types.{field}: unknown type {t!r} (expected one of {', '.join(_TYPES)})")
        if not required and not types:
            raise Err("nothing to check: set `required` and/or `types`")
        methods = cfg.get("methods", ["POST", "PUT", "PATCH"])
        if not isinstance(methods, list) or not methods:
            raise Err("`methods` must be a non-empty list")
        _required, _types = list(required), dict(types)
        _methods = {str(m).upper() for m in methods}
        # Only on-request does anything: the gateway skips the other phases. It reads the body,
        # never a header, so it is shown none.
        return PluginInfo(
            needs_request_body=True,
            needs_response_body=False,
            phases=Phases.ON_REQUEST,
            request_headers=[],
        )

    def on_request(self, req: Request) -> Action:
        if req.method not in _methods:
            return _continue()
        return check(req.body)

    def on_response(self, resp: ResponseHead) -> ResponseEdits:
        return ResponseEdits(
            status=None, set_headers=[], append_headers=[], remove_headers=[], body=None
        )

    def on_log(self, entry: LogEntry) -> None:
        pass

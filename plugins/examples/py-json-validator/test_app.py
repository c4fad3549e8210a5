"""Unit tests: `python3 -m unittest` (in this directory). They run app.py natively against the generated bindings
(.weir/bindings, written by `weir plugin build`) with the host functions replaced by fakes."""

import json
import os
import shutil
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
BINDINGS = os.path.join(HERE, ".weir", "bindings")


def _ensure_bindings() -> None:
    """Generates the bindings if `weir plugin build` has not (same tool, same contract)."""
    if os.path.isdir(os.path.join(BINDINGS, "wit_world")):
        return
    d, tool, wit = HERE, None, None
    while True:
        cand = os.path.join(d, ".venv", "bin", "componentize-py")
        tool = tool or (cand if os.path.exists(cand) else None)
        cand = os.path.join(d, "wit", "policy.wit")
        wit = wit or (os.path.dirname(cand) if os.path.exists(cand) else None)
        if os.path.dirname(d) == d:
            break
        d = os.path.dirname(d)
    tool = tool or shutil.which("componentize-py")
    if tool is None or wit is None:
        raise RuntimeError("no bindings: run `weir plugin build` once (it writes .weir/bindings)")
    subprocess.run([tool, "-d", wit, "-w", "policy", "bindings", BINDINGS], check=True)


_ensure_bindings()
sys.path.insert(0, BINDINGS)

import app  # noqa: E402
from componentize_py_types import Err  # noqa: E402
from wit_world.imports import log  # noqa: E402
from wit_world.imports.types import Action_Continue, Action_Respond, Request  # noqa: E402


def request(method: str, body: bytes | None) -> Request:
    return Request(
        method=method,
        path="/users",
        query=None,
        headers=[("content-type", "application/json")],
        body=body,
        client_ip="127.0.0.1",
        route="test",
        request_id="test-request",
        scheme="http",
        host="localhost",
    )


class JsonValidatorTest(unittest.TestCase):
    def setUp(self):
        self.logs = []
        log.log = lambda level, message, fields: self.logs.append((level, message, fields))
        self.world = app.WitWorld()
        info = self.world.init(
            json.dumps({"required": ["name", "email"], "types": {"name": "string", "age": "integer"}})
        )
        self.assertTrue(info.needs_request_body)

    def decide(self, method, body):
        return self.world.on_request(request(method, body))

    def problem(self, action):
        self.assertIsInstance(action, Action_Respond)
        self.assertEqual(action.value.headers, [("content-type", "application/problem+json")])
        return action.value.status, json.loads(action.value.body)

    def test_valid_bodies_continue(self):
        ok = self.decide("POST", b'{"name": "Ada", "email": "ada@example.com", "age": 36}')
        self.assertIsInstance(ok, Action_Continue)
        self.assertIsInstance(self.decide("GET", None), Action_Continue)
        self.assertEqual(self.logs, [])

    def test_missing_fields_are_422(self):
        status, doc = self.problem(self.decide("POST", b'{"name": "Ada"}'))
        self.assertEqual((status, doc["fields"]), (422, ["email"]))
        self.assertEqual(len(self.logs), 1)

    def test_wrong_types_are_422(self):
        body = b'{"name": 1, "email": "e", "age": true}'
        status, doc = self.problem(self.decide("PUT", body))
        self.assertEqual((status, sorted(doc["fields"])), (422, ["age", "name"]))

    def test_non_json_is_400_and_non_objects_422(self):
        self.assertEqual(self.problem(self.decide("POST", b"{nope"))[0], 400)
        self.assertEqual(self.problem(self.decide("POST", None))[0], 400)
        self.assertEqual(self.problem(self.decide("PATCH", b"[1]"))[0], 422)

    def test_bad_configs_are_rejected(self):
        for cfg, needle in [
            ({}, "nothing to check"),
            ({"required": "name"}, "list of field names"),
            ({"types": {"a": "date"}}, "types.a"),
            ({"required": ["a"], "typo": 1}, "typo"),
        ]:
            with self.assertRaises(Err) as e:
                self.world.init(json.dumps(cfg))
            self.assertIn(needle, e.exception.value)


if __name__ == "__main__":
    unittest.main()

"""envoy/usage.lua under LuaJIT (as in Envoy) with a stand-in for Envoy's stream handle,
for the unit tests of the usage it reads off a response."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import lupa.luajit21 as luajit  # a dev dependency: no silent skip without it

Scan = Callable[[list[bytes]], dict[str, int]]

# Envoy's handle, as much of it as the script uses: body chunks, then dynamic metadata.
HANDLE = """
return function(chunks)
  local meta = {}
  local handle = {}
  function handle:bodyChunks()
    local i = 0
    return function()
      i = i + 1
      local s = chunks[i]
      if s == nil then return nil end
      return {
        length = function(_) return #s end,
        getBytes = function(_, start, len) return string.sub(s, start + 1, start + len) end,
      }
    end
  end
  function handle:streamInfo()
    return {dynamicMetadata = function(_)
      return {set = function(_, ns, key, value) meta[ns .. "/" .. key] = value end}
    end}
  end
  envoy_on_response(handle)
  return meta
end
"""


def usage_scanner() -> Scan:
    """The filter's response handler: body chunks in, the dynamic metadata it set out."""
    runtime = luajit.LuaRuntime(encoding=None)
    runtime.execute(resources.files("fairlane.envoy").joinpath("usage.lua").read_text())
    run = runtime.execute(HANDLE)

    def scan(chunks: list[bytes]) -> dict[str, int]:
        meta = run(runtime.table_from(chunks))
        return {k.decode().split("/")[1]: int(v) for k, v in meta.items()}

    return scan


def event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]

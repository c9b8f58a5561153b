-- Observes token usage on the response path without holding a byte back.
-- bodyChunks() hands each chunk to the script as it passes (Envoy does not buffer it),
-- so streaming latency is untouched. At the end of the response the counts are written
-- to dynamic metadata, which reaches Fairlane's worker in the access-log record.
local NAMESPACE = "fairlane.usage"
-- One non-empty content (chat) or text (completions) delta per decode step. A delta
-- cut between two body chunks is missed: rare, and the count is only the fallback for
-- a stream without usage.
local CONTENT = '"content":%s*"[^"]'
local TEXT = '"text":%s*"[^"]'
-- Enough of the previous chunks to complete a usage object cut in two.
local TAIL = 200

local function count(s, pattern)
  local n = 0
  for _ in string.gmatch(s, pattern) do n = n + 1 end
  return n
end

function envoy_on_response(handle)
  local chunks = 0
  local prompt = nil
  local completion = nil
  local tail = ""
  for chunk in handle:bodyChunks() do
    local s = chunk:getBytes(0, chunk:length())
    chunks = chunks + count(s, CONTENT) + count(s, TEXT)
    local text = tail .. s
    -- The last count wins: with vLLM's continuous_usage_stats every event carries the
    -- running count, and one chunk can hold several events (or the tail an older one).
    if string.find(text, '"usage"', 1, true) then
      for p in string.gmatch(text, '"prompt_tokens":%s*(%d+)') do prompt = tonumber(p) end
      for c in string.gmatch(text, '"completion_tokens":%s*(%d+)') do completion = tonumber(c) end
    end
    tail = string.sub(text, -TAIL)
  end
  local meta = handle:streamInfo():dynamicMetadata()
  meta:set(NAMESPACE, "chunks", chunks)
  if prompt then meta:set(NAMESPACE, "prompt_tokens", prompt) end
  if completion then meta:set(NAMESPACE, "completion_tokens", completion) end
end

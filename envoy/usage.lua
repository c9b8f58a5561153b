-- Observes token usage on the response path without holding a byte back.
-- bodyChunks() hands each chunk to the script as it passes (Envoy does not buffer it),
-- so streaming latency is untouched. At the end of the response the counts are written
-- to dynamic metadata, which reaches Fairlane's worker in the access-log record.
local NAMESPACE = "fairlane.usage"
-- A non-empty delta per decode step: of the answer (chat `content`, completions and
-- Messages `text`), of a reasoning model's thinking (vLLM's `reasoning`, formerly
-- `reasoning_content`; Messages `thinking`), of a tool call's `arguments` (Messages
-- `partial_json`), or any of those in a Responses stream's `*.delta` events (`delta`: a
-- chat's is an object, never counted). A delta cut between two body chunks is missed:
-- rare, and the count is only the fallback for a stream without usage (Responses and
-- Messages streams always end with it).
local DELTA_KEYS = {
  content = true, text = true, reasoning = true, reasoning_content = true, arguments = true,
  delta = true, thinking = true, partial_json = true,
}
-- Any member whose value is a non-empty string: one scan (faster than one per key).
-- Inside a string quotes are escaped, so text that looks like a member never matches.
local STRING_MEMBER = '"([%w_]+)":%s*"[^"]'
-- Enough of the previous chunks to complete a usage object cut in two (a Responses
-- usage object puts its details between its two counts: ~170 bytes, more per turn of a
-- tool loop).
local TAIL = 400

local function deltas(s)
  local n = 0
  for key in string.gmatch(s, STRING_MEMBER) do
    if DELTA_KEYS[key] then n = n + 1 end
  end
  return n
end

-- The last count under `key` in s, else `current`. A plain search first (memchr): a
-- pattern scan of a text without the key costs several times more.
local function last(s, key, current)
  local quoted = '"' .. key .. '"'
  if not string.find(s, quoted, 1, true) then return current end
  for n in string.gmatch(s, quoted .. ':%s*(%d+)') do current = tonumber(n) end
  return current
end

function envoy_on_response(handle)
  local chunks = 0
  local prompt = nil
  local completion = nil
  -- Anthropic's input_tokens leave out the prompt tokens read from or written to the
  -- prefix cache, which the engine still holds: counted back in.
  local cache_read, cache_written = 0, 0
  local tail = ""
  for chunk in handle:bodyChunks() do
    local s = chunk:getBytes(0, chunk:length())
    chunks = chunks + deltas(s)
    local text = tail .. s
    -- The last count wins: with vLLM's continuous_usage_stats every event carries the
    -- running count, and one chunk can hold several events (or the tail an older one).
    -- The Responses and Messages APIs name the counts input_tokens and output_tokens.
    if string.find(text, '"usage"', 1, true) then
      prompt = last(text, "prompt_tokens", prompt)
      completion = last(text, "completion_tokens", completion)
      prompt = last(text, "input_tokens", prompt)
      completion = last(text, "output_tokens", completion)
      cache_read = last(text, "cache_read_input_tokens", cache_read)
      cache_written = last(text, "cache_creation_input_tokens", cache_written)
    end
    tail = string.sub(text, -TAIL)
  end
  local meta = handle:streamInfo():dynamicMetadata()
  meta:set(NAMESPACE, "chunks", chunks)
  if prompt then meta:set(NAMESPACE, "prompt_tokens", prompt + cache_read + cache_written) end
  -- A zero beside streamed deltas is an opening count (a Messages stream's
  -- message_start) of a stream that never sent its final one: the deltas are the count.
  if completion == 0 and chunks > 0 then completion = nil end
  if completion then meta:set(NAMESPACE, "completion_tokens", completion) end
end

-- Observes token usage on the response path without holding a byte back.
-- bodyChunks() hands each chunk to the script as it passes (Envoy does not buffer it),
-- so streaming latency is untouched. At the end of the response the counts are written
-- to dynamic metadata, which reaches Fairlane's worker in the access-log record.
local NAMESPACE = "fairlane.usage"

function envoy_on_response(handle)
  local chunks = 0
  local prompt = nil
  local completion = nil
  local tail = ""
  for chunk in handle:bodyChunks() do
    local s = chunk:getBytes(0, chunk:length())
    -- One non-empty content (chat) or text (completions) delta per decode step.
    for _ in string.gmatch(s, '"content":%s*"[^"]') do chunks = chunks + 1 end
    for _ in string.gmatch(s, '"text":%s*"[^"]') do chunks = chunks + 1 end
    -- The usage object may straddle two chunks: search with the previous tail.
    local text = tail .. s
    if string.find(text, '"usage"', 1, true) then
      local p = string.match(text, '"prompt_tokens":%s*(%d+)')
      local c = string.match(text, '"completion_tokens":%s*(%d+)')
      if p then prompt = tonumber(p) end
      if c then completion = tonumber(c) end
    end
    tail = string.sub(s, -200)
  end
  local meta = handle:streamInfo():dynamicMetadata()
  meta:set(NAMESPACE, "chunks", chunks)
  if prompt then meta:set(NAMESPACE, "prompt_tokens", prompt) end
  if completion then meta:set(NAMESPACE, "completion_tokens", completion) end
end

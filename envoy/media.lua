-- Finds the media of a /v1/chat/completions or /v1/responses body, for the worker's
-- prompt estimate: an image, audio or video part's `url` (a link, or the media itself as
-- a `data:` URL), a Responses input_image's `image_url` string (a chat's is an object
-- holding the `url`) or an input_audio part's base64 `data` is bytes the engine does not
-- tokenize as text but turns into its own tokens, so the worker counts it per item
-- (cost.media_tokens) instead of per character. Only the values of those keys count:
-- text anywhere else, however it looks, is still estimated as text. Plain searches
-- (memchr) find the keys; a body without them costs three of them. Counts go to the
-- request's metadata when above zero.
local NAMESPACE = "fairlane.request"

-- The index of the closing quote of the string value that follows the key ending at
-- `after` (nil if the key is not followed by a string), and where that string starts.
-- Base64 and URLs hold no quotes; an escaped one would end the count early, so more
-- of the body is estimated as text, never less.
local function string_value(s, after)
  local open = string.match(s, "^%s*:%s*()\"", after)
  if open == nil then return nil end
  local close = string.find(s, '"', open + 1, true)
  if close == nil then return nil end
  return open, close
end

-- Items and bytes (quotes included) of the string values of `key` longer than
-- `min_bytes`.
local function values(s, key, min_bytes)
  local items, bytes, from = 0, 0, 1
  while true do
    local _, j = string.find(s, key, from, true)
    if j == nil then return items, bytes end
    local open, close = string_value(s, j + 1)
    if open ~= nil and close - open > min_bytes then
      items, bytes, from = items + 1, bytes + close - open + 1, close + 1
    else
      from = j + 1
    end
  end
end

-- A `data` key is common enough elsewhere (a tool's JSON schema, say) that only a long
-- value counts: a second of 16 kHz audio is 43 KB of base64.
local MIN_DATA_BYTES = 1024

local function media(s)
  local url_items, url_bytes = values(s, '"url"', 0)
  local image_items, image_bytes = values(s, '"image_url"', 0)
  local data_items, data_bytes = values(s, '"data"', MIN_DATA_BYTES)
  return url_items + image_items + data_items, url_bytes + image_bytes + data_bytes
end

function envoy_on_request(handle)
  local body = handle:body()
  if body == nil then return end
  local items, bytes = media(body:getBytes(0, body:length()))
  if items > 0 then
    local meta = handle:streamInfo():dynamicMetadata()
    meta:set(NAMESPACE, "media_items", items)
    meta:set(NAMESPACE, "media_bytes", bytes)
  end
end

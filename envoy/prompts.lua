-- Counts the prompts of a /v1/completions body, for the worker's slot count: vLLM and
-- SGLang run a `prompt` list of texts or of token-id lists as one sequence per item
-- (times `n`), and json_to_metadata cannot count a list. vLLM's pooling APIs are the
-- same: an `input` list (/v1/embeddings, /classify, /pooling) is a sequence per item, a
-- rerank's `documents` a (query, document) pair each, and a score's lists as many pairs
-- as the longer one; the route names the keys. A body without a '[' is one prompt (one
-- search); one with is walked once between structural characters with string.find
-- (plain searches where it can: memchr), nothing decoded or copied but short keys. The
-- count goes to the request's metadata as `prompts` when above one, before ext_proc
-- reads it.
local NAMESPACE = "fairlane.request"
local STRUCTURAL = '[%[%]{}",]'
local OPENERS = { "[", "{", '"' } -- what a flat array of numbers cannot hold
-- A body that needs more searches than this is hostile (a legitimate batch of 24,000
-- token-id lists takes ~50,000): it counts as MANY prompts, i.e. the whole engine,
-- rather than hold an Envoy worker thread for seconds.
local MAX_STEPS = 1000000
local MANY = 1000000

-- One body's walk. Every search moves forward, so the next '[', '{' and '"' (for
-- telling a flat array of numbers) are searched once each per occurrence.
local function walker(s)
  local steps = 0
  local next_at = {}

  local function find(pattern, from, plain)
    steps = steps + 1
    if steps > MAX_STEPS then error("too many steps", 0) end
    return string.find(s, pattern, from, plain)
  end

  local function next_of(char, from)
    local at = next_at[char]
    if at == nil or (at and at < from) then
      at = find(char, from, true) or false
      next_at[char] = at
    end
    return at
  end

  -- The index just past the string whose opening quote is at i (nil: unterminated);
  -- a quote after an odd run of backslashes is escaped.
  local function past_string(i)
    local j = i + 1
    while true do
      local k = find('"', j, true)
      if k == nil then return nil end
      local b = k - 1
      while string.byte(s, b) == 92 do b = b - 1 end
      if (k - 1 - b) % 2 == 0 then return k + 1 end
      j = k + 1
    end
  end

  -- The index just past a flat array (numbers only) whose '[' is at i, else nil.
  -- Token-id lists are the long arrays: each is skipped in a few searches.
  local function past_flat_array(i)
    local close = find("]", i + 1, true)
    if close == nil then return nil end
    for _, char in ipairs(OPENERS) do
      local open = next_of(char, i + 1)
      if open and open < close then return nil end
    end
    return close + 1
  end

  -- Walks the array or object whose opening bracket is at i. Returns the items at its
  -- top level, the first byte of its first item (nil if empty) and the index past its
  -- end; nil if it never ends. For an object, on_key(i, j) is called with each of its
  -- keys s[i, j) and returns the index to go on from (nil: the body ends early).
  local function walk(i, on_key)
    local first = string.find(s, "[^ \t\r\n]", i + 1)
    if first == nil then return nil end
    local first_byte = string.byte(s, first)
    if first_byte == 93 or first_byte == 125 then return 0, nil, first + 1 end
    if string.byte(s, i) == 91 then
      local flat = past_flat_array(i)
      if flat ~= nil then return 1, first_byte, flat end -- one item is enough to know
    end
    local depth, items, want_key, k = 1, 1, on_key ~= nil, i + 1
    while true do
      k = find(STRUCTURAL, k)
      if k == nil then return nil end
      local c = string.byte(s, k)
      if c == 34 then
        local after = past_string(k)
        if after == nil then return nil end
        if depth == 1 and want_key then
          want_key = false
          after = on_key(k, after)
          if after == nil then return nil end
        end
        k = after
      elseif c == 91 then
        local skip = past_flat_array(k)
        if skip ~= nil then
          k = skip
        else
          depth, k = depth + 1, k + 1
        end
      elseif c == 123 then
        depth, k = depth + 1, k + 1
      elseif c == 93 or c == 125 then
        depth, k = depth - 1, k + 1
        if depth == 0 then return items, first_byte, k end
      else -- a comma
        if depth == 1 then
          items = items + 1
          want_key = on_key ~= nil
        end
        k = k + 1
      end
    end
  end

  return walk
end

-- Is the key s[i, j) (quotes included) `name`, escapes decoded as JSON would?
local function is_key(s, i, j, name)
  if j - i == #name + 2 then return string.sub(s, i + 1, j - 2) == name end
  if j - i > 40 then return false end
  local key = string.sub(s, i + 1, j - 2)
  if not string.find(key, "\\", 1, true) then return false end
  key = string.gsub(key, "\\u00(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end)
  key = string.gsub(key, "\\(.)", "%1")
  return key == name
end

-- The number of prompts in the body: the longest list under one of `names` (a set).
-- For each key the last one wins, as in the engines' JSON parsers. A list of texts, of
-- lists or of objects (a score's multimodal items) is one prompt per item; anything
-- else is one.
local function prompts(s, names)
  local start = string.find(s, "{", 1, true)
  if start == nil then return 1 end
  local walk = walker(s)
  local counts = {}
  -- After each top-level key: the index to go on from (past the value if it read it).
  local function on_key(i, j)
    local name = nil
    for candidate in pairs(names) do
      if is_key(s, i, j, candidate) then name = candidate end
    end
    if name == nil then return j end
    counts[name] = 1
    local value = string.find(s, "[^ \t\r\n:]", j)
    if value == nil or string.byte(s, value) ~= 91 then return j end
    local items, first, past = walk(value, nil)
    if past ~= nil and (first == 34 or first == 91 or first == 123) then
      counts[name] = math.max(items, 1)
    end
    return past
  end
  -- Over MAX_STEPS: MANY. A body that ends early is not JSON: the engine answers 400.
  if not pcall(walk, start, on_key) then return MANY end
  local count = 1
  for _, n in pairs(counts) do count = math.max(count, n) end
  return count
end

-- The keys that hold the prompts on this route, as a set: its metadata lists them
-- (envoy/routes.py; the filter runs only on routes that have them).
local function prompt_keys(handle)
  local keys = {}
  for _, key in ipairs(handle:metadata():get("prompt_keys") or {}) do keys[key] = true end
  return keys
end

function envoy_on_request(handle)
  local body = handle:body()
  if body == nil then return end
  local s = body:getBytes(0, body:length())
  if not string.find(s, "[", 1, true) then return end
  local count = prompts(s, prompt_keys(handle))
  if count > 1 then handle:streamInfo():dynamicMetadata():set(NAMESPACE, "prompts", count) end
end

-- KEYS: totals, born, at, chg, meta. ARGV: epoch seen ('' = none), last seq read, new id,
-- wall time, ttl, then tenant, amount pairs. Pushes the pairs, then returns
-- {epoch, seq, tenant, total, born, ...} for every tenant changed after the last seq (all
-- of them when the epoch is not the one seen).
local totals, born, at, chg, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, ttl = ARGV[3], ARGV[5]
if redis.call('HSETNX', meta, 'epoch', id) == 1 then redis.call('EXPIRE', meta, ttl) end
local epoch = redis.call('HGET', meta, 'epoch')
local last = tonumber(ARGV[2])
if ARGV[1] ~= epoch then last = 0 end
if #ARGV > 5 then
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  for i = 6, #ARGV, 2 do
    local tenant = ARGV[i]
    redis.call('HSETNX', born, tenant, seq .. ':' .. id)
    redis.call('HINCRBYFLOAT', totals, tenant, ARGV[i + 1])
    redis.call('HSET', at, tenant, ARGV[4])
    redis.call('ZADD', chg, seq, tenant)
  end
  for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ttl) end
end
local out = {epoch, redis.call('HGET', meta, 'seq') or '0', tostring(last)}
for _, tenant in ipairs(redis.call('ZRANGEBYSCORE', chg, '(' .. last, '+inf')) do
  local total = redis.call('HGET', totals, tenant)
  if total then
    table.insert(out, tenant)
    table.insert(out, total)
    table.insert(out, redis.call('HGET', born, tenant) or '0:')
  end
end
return out

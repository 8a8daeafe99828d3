-- Argo CD health of a vending.resilience.dev VendingMachine.
--
-- Degraded exactly when kstatus says Failed (Stalled=True: the machine is escalated or stopped
-- and waits for a human or its fleet), so Argo CD and Flux agree on what is broken. An out-of-milk
-- machine serves (Degraded=True of our own is partial service): Healthy, and the message says so.
-- Uses only what Argo CD opens for argocd-cm scripts: no string or math library.
local function condition(t)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == t then
      return c
    end
  end
  return nil
end

local function isTrue(t)
  local c = condition(t)
  return c ~= nil and c.status == "True"
end

local function withDegraded(message)
  if isTrue("Degraded") then
    return message .. "; " .. condition("Degraded").message
  end
  return message
end

local generation = obj.metadata.generation
local observed = obj.status ~= nil and obj.status.observedGeneration or nil
if generation ~= nil and observed ~= nil and observed < generation then
  return {status = "Progressing", message = "waiting for the operator to observe generation " .. generation}
end
if isTrue("Stalled") then
  return {status = "Degraded", message = condition("Stalled").message}
end
if obj.spec ~= nil and obj.spec.paused == true then
  return {status = "Suspended", message = "spec.paused: the operator does not act on this machine"}
end
if isTrue("Reconciling") then
  return {status = "Progressing", message = condition("Reconciling").message}
end
local ready = condition("Ready")
if ready == nil then
  return {status = "Progressing", message = "waiting for the operator to report the machine's status"}
end
if ready.status == "True" then
  return {status = "Healthy", message = withDegraded(ready.message)}
end
return {status = "Progressing", message = withDegraded(ready.message)}

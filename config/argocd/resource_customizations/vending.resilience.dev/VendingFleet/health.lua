-- Argo CD health of a vending.resilience.dev VendingFleet.
--
-- Degraded exactly when kstatus says Failed (Stalled=True: the fleet escalated to humans, holds a
-- machine with a corrupt log for them, or its rollout stopped). A fleet resetting machines that
-- escalated to it is doing its job: Progressing until they are Ready again, with the escalated
-- machines named. Machines out of milk serve: Healthy, and the message says which.
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

-- A condition's message, "" when it has none (concatenating nil fails the script).
local function messageOf(c)
  return c.message or ""
end

-- The first condition, in list order, of Reconciling=True and Stalled=True: kstatus takes the
-- first one it meets (InProgress or Failed), so Degraded only when kstatus says Failed.
local function firstAbnormal()
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if (c.type == "Reconciling" or c.type == "Stalled") and c.status == "True" then
      return c
    end
  end
  return nil
end

local function withDegraded(message)
  if isTrue("Degraded") then
    return message .. "; " .. messageOf(condition("Degraded"))
  end
  return message
end

local generation = obj.metadata.generation
local observed = obj.status ~= nil and obj.status.observedGeneration or nil
-- ~=, as kstatus: an observedGeneration ahead of the object is not one the operator acted on.
if generation ~= nil and observed ~= nil and observed ~= generation then
  return {status = "Progressing", message = "waiting for the operator to observe generation " .. generation}
end
local abnormal = firstAbnormal()
if abnormal ~= nil and abnormal.type == "Stalled" then
  return {status = "Degraded", message = messageOf(abnormal)}
end
if obj.spec ~= nil and obj.spec.paused == true then
  return {status = "Suspended", message = "spec.paused: the fleet acts on nothing; its machines keep supervising their own pods"}
end
if abnormal ~= nil then
  return {status = "Progressing", message = messageOf(abnormal)}
end
local ready = condition("Ready")
if ready == nil then
  return {status = "Progressing", message = "waiting for the operator to report the fleet's status"}
end
if ready.status == "True" then
  return {status = "Healthy", message = withDegraded(messageOf(ready))}
end
return {status = "Progressing", message = withDegraded(messageOf(ready))}

// Package managerloop supervises the operator's controller-runtime manager inside the process, as
// a supervisor restarts a child: when the API server is away the operator waits for it instead of
// exiting, and when the manager loses its lease it stops acting and campaigns again, with a fresh
// manager, without the kubelet's growing back-off in between.
//
// One round of the loop:
//
//	wait until the API server answers GET /readyz (a short fixed poll, logged once per state)
//	build a fresh manager (a controller-runtime Manager cannot be started twice) and its controllers
//	Start it: it campaigns for the lease with the process's one identity, then leads
//	Start returns (lease lost, API server gone, a runnable failed): drain, then go round again
//
// Why a fresh manager after the API server returns, rather than one that waits it out: client-go's
// reflectors back off up to 30 s between failed lists, so a manager that lived through a long outage
// may see the world that long after the API server is back; a fresh one lists at once.
//
// Never two leaders acting at once. controller-runtime (v0.25, pkg/manager/internal.go) turns a lost
// lease into an error from Start, but first sets the graceful shutdown timeout to zero: Start then
// returns without waiting for the controllers to finish (runnable_group.go StopAndWait gives up
// when its context has expired), because it expects the process to exit at once. This loop does not
// exit, so it waits itself: every runnable the controllers add goes through a tracker, and the next
// manager is built only after every tracked runnable of the old one has returned (a controller's
// Start returns only after its workers finished their reconciles). The wait is bounded by the
// margin the lease timing leaves (LeaseDuration - RenewDeadline - RetryPeriod: the last renewal is
// at most RetryPeriod + RenewDeadline before Start returns, and another replica may take the lease
// no earlier than LeaseDuration after it): a controller that does not stop within it ends the
// process, as controller-runtime would have, and the kubelet restarts it.
//
// The lease is released (ReleaseOnCancel) only when the process is stopping and no tracked
// runnable is running: client-go also releases after a failed renewal, before controller-runtime
// has even told the controllers to stop, which would let another replica lead while ours still act.
//
// One identity per process (hostname_uuid) across every manager: client-go lets the holder of the
// lease renew it at once, while a new identity would wait a whole lease duration after it first
// sees the old record. So when the API server returns, this process takes its lease back at once.
//
// Health probes and metrics are served by servers that live as long as the process, not by each
// manager: /healthz says the loop is alive (the kubelet must not restart us while we wait for the
// API server), /readyz says a manager is running.
package managerloop

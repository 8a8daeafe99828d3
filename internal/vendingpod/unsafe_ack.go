//go:build unsafeack

package vendingpod

// ackBeforeDurable makes the writer acknowledge a request before its record is written and
// fsynced (it writes and fsyncs right after: the classic ack-then-fsync bug). This
// build is deliberately broken: test/powercut builds it with -tags unsafeack and asserts that
// power cuts make porcupine reject its customers' history, which proves the check can fail.
const ackBeforeDurable = true

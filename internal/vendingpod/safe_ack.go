//go:build !unsafeack

package vendingpod

// ackBeforeDurable is false in every real build: an answer waits for its record's fdatasync.
// (unsafe_ack.go holds the deliberately broken variant for the power-cut test.)
const ackBeforeDurable = false

package eventlog

// SetReadWindow makes the readers' window n bytes (so that small test logs cross windows) and
// returns the function that restores it.
func SetReadWindow(n int) (restore func()) {
	old := readWindow
	readWindow = n
	return func() { readWindow = old }
}

package vendcli

import "fmt"

// ColorMode is the --color flag: auto (a terminal, and NO_COLOR unset), always or never.
type ColorMode string

// Color modes.
const (
	ColorAuto   ColorMode = "auto"
	ColorAlways ColorMode = "always"
	ColorNever  ColorMode = "never"
)

// UseColor decides whether output is colored. auto colors only a terminal, and honours
// NO_COLOR (https://no-color.org: any non-empty value) and TERM=dumb; an explicit --color=always
// is the user's choice and wins over the environment, as no-color.org asks.
func UseColor(mode ColorMode, isTerminal bool, getenv func(string) string) (bool, error) {
	switch mode {
	case ColorAlways:
		return true, nil
	case ColorNever:
		return false, nil
	case ColorAuto, "":
		return isTerminal && getenv("NO_COLOR") == "" && getenv("TERM") != "dumb", nil
	}
	return false, fmt.Errorf("--color must be auto, always or never, not %q", mode)
}

// severity orders what status shows: problems first.
type severity int

const (
	sevStalled  severity = iota // escalated or stopped: only a human moves it on
	sevNotReady                 // not serving (yet): restarting, backing off, pending, paused
	sevDegraded                 // serving part of its menu
	sevHealthy
	sevNone // a line that judges nothing (a claim, a header)
)

// Words for the severities, as status and why show them.
const (
	wordStalled  = "Stalled"
	wordNotReady = "NotReady"
	wordDegraded = "Degraded"
	wordReady    = "Ready"
	wordPaused   = "Paused"
)

func (s severity) word() string {
	switch s {
	case sevStalled:
		return wordStalled
	case sevNotReady:
		return wordNotReady
	case sevDegraded:
		return wordDegraded
	}
	return wordReady
}

// painter colors text by severity, or not at all.
type painter bool

const (
	ansiRed    = "\x1b[31m"
	ansiYellow = "\x1b[33m"
	ansiGreen  = "\x1b[32m"
	ansiBold   = "\x1b[1m"
	ansiReset  = "\x1b[0m"
)

func (p painter) paint(s severity, text string) string {
	if !p || text == "" {
		return text
	}
	switch s {
	case sevStalled:
		return ansiRed + text + ansiReset
	case sevNotReady, sevDegraded:
		return ansiYellow + text + ansiReset
	case sevHealthy:
		return ansiGreen + text + ansiReset
	}
	return text
}

func (p painter) bold(text string) string {
	if !p || text == "" {
		return text
	}
	return ansiBold + text + ansiReset
}

package e2e

// init turns the re-executed test binary into an in-pod helper before the
// testing package starts (an init rather than TestMain, so that other test
// files of this package may still define TestMain-free tests freely).
func init() { RunHelper() }

package e2e

// init turns a re-executed test binary into an in-pod helper before the
// testing package starts. It is an init function, not TestMain, so that the
// package's other test files remain free to define a TestMain.
func init() { RunHelper() }

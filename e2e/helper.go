package e2e

import (
	"fmt"
	"os"
)

// helperEnv names the helper role a re-executed test binary plays.
const helperEnv = "NODEMESH_E2E_HELPER"

// helpers are the roles a re-executed test binary can play inside a pod.
var helpers = map[string]func(args []string) error{
	"echo":   runEcho,
	"client": runClient,
}

// RunHelper turns this process into an in-pod helper (echo server, client)
// when it was started as one by the harness, and then exits; otherwise it
// returns at once. Test binaries that use the harness call it first, from
// TestMain or an init function.
func RunHelper() {
	role, ok := os.LookupEnv(helperEnv)
	if !ok {
		return
	}
	h, ok := helpers[role]
	if !ok {
		fmt.Fprintf(os.Stderr, "e2e helper: unknown role %q\n", role)
		os.Exit(2)
	}
	if err := h(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "e2e helper %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// helperArgv returns the environment and argv that re-execute this binary
// as the given helper.
func helperArgv(role string, args ...string) ([]string, []string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, fmt.Errorf("find test binary: %w", err)
	}
	return []string{helperEnv + "=" + role}, append([]string{exe}, args...), nil
}

package ads

import (
	"context"
	"fmt"

	"github.com/nodemesh/nodemesh/nodeagent"
)

// Dataplane is the kernel half as the ADS client needs it
// (*nodeagent.Dataplane).
type Dataplane interface {
	Apply(ctx context.Context, s nodeagent.State) (nodeagent.Stats, error)
}

// DataplaneApplier is the Applier that programs the kernel: it converts the
// resources with ToState and applies the State. Either error is NACKed; the
// kernel writes nothing when the State does not validate.
type DataplaneApplier struct {
	dataplane Dataplane
	conv      *Converter
}

// NewDataplaneApplier returns the Applier that programs dp.
func NewDataplaneApplier(dp Dataplane, cfg StateConfig) *DataplaneApplier {
	return &DataplaneApplier{dataplane: dp, conv: NewConverter(cfg)}
}

// Apply converts and applies res. The ADS client calls it from one
// goroutine.
func (a *DataplaneApplier) Apply(ctx context.Context, res *Resources) error {
	st, err := a.conv.Convert(res)
	if err != nil {
		return err
	}
	if _, err := a.dataplane.Apply(ctx, st); err != nil {
		return fmt.Errorf("applying dataplane state: %w", err)
	}
	return nil
}

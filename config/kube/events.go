package kube

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/nodemesh/nodemesh/config"
)

// Event fields nodemesh writes.
const (
	EventReason    = "InvalidConfig"
	EventComponent = "nodemesh"
)

// eventWriter reports invalid objects as Warning Events, once per object
// revision, while this replica is the leader.
type eventWriter struct {
	cfg    Config
	kube   kubernetes.Interface
	leader atomic.Bool
	kick   chan struct{}

	mu       sync.Mutex
	pending  map[revision]decoded // invalid now, not yet reported
	reported map[revision]bool    // reported by this replica
}

// revision identifies one version of one object.
type revision struct {
	uid             types.UID
	resourceVersion string
}

func newEventWriter(cfg Config, kube kubernetes.Interface) *eventWriter {
	return &eventWriter{cfg: cfg, kube: kube, kick: make(chan struct{}, 1),
		pending: map[revision]decoded{}, reported: map[revision]bool{}}
}

// report records the objects that are invalid now; revisions not in the list
// are forgotten (the object was fixed or deleted).
func (w *eventWriter) report(invalid []decoded) {
	if w.cfg.LeaderElection == nil {
		return
	}
	w.mu.Lock()
	now := make(map[revision]bool, len(invalid))
	for _, d := range invalid {
		r := revision{d.ref.UID, d.ref.ResourceVersion}
		now[r] = true
		if !w.reported[r] {
			w.pending[r] = d
		}
	}
	for r := range w.pending {
		if !now[r] {
			delete(w.pending, r)
		}
	}
	for r := range w.reported {
		if !now[r] {
			delete(w.reported, r)
		}
	}
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// run takes part in leader election until ctx is done, writing Events while
// leading.
func (w *eventWriter) run(ctx context.Context) {
	le := w.cfg.LeaderElection
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: le.Namespace, Name: le.Name},
		Client:     w.kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: le.Identity},
	}
	log := w.cfg.Logger.With("lease", le.Namespace+"/"+le.Name, "identity", le.Identity)
	for ctx.Err() == nil {
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, ReleaseOnCancel: true, Name: le.Name,
			LeaseDuration: le.LeaseDuration, RenewDeadline: le.RenewDeadline, RetryPeriod: le.RetryPeriod,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					log.Info("kube source: leading; writing status")
					w.leader.Store(true)
					w.write(ctx)
				},
				OnStoppedLeading: func() {
					w.leader.Store(false)
					log.Info("kube source: not leading; status writes stopped")
				},
			},
		})
		if err != nil { // only for an invalid configuration, which Validate rules out
			log.Error("kube source: leader election", "err", err)
			return
		}
		elector.Run(ctx)
	}
}

// IsLeader reports whether this replica currently writes status.
func (s *Source) IsLeader() bool { return s.events.leader.Load() }

// write sends pending Events until ctx (the leadership) ends.
func (w *eventWriter) write(ctx context.Context) {
	for {
		w.mu.Lock()
		batch := make(map[revision]decoded, len(w.pending))
		for r, d := range w.pending {
			batch[r] = d
		}
		w.mu.Unlock()
		for r, d := range batch {
			err := w.send(ctx, d)
			w.mu.Lock()
			if err == nil {
				if _, still := w.pending[r]; still {
					w.reported[r] = true
				}
				delete(w.pending, r)
			}
			w.mu.Unlock()
			if err != nil && ctx.Err() == nil {
				w.cfg.Logger.Warn("kube source: write event", "object", d.ref.Kind+"/"+d.ref.Namespace+"/"+d.ref.Name, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
		case <-time.After(30 * time.Second): // retry failed writes
		}
	}
}

// eventMessage lists the errors of an object, like `istioctl analyze`.
func eventMessage(diags []config.Diagnostic) string {
	var parts []string
	for _, d := range diags {
		if d.Severity != config.SeverityError {
			continue
		}
		if d.Field != "" {
			parts = append(parts, d.Field+": "+d.Message)
		} else {
			parts = append(parts, d.Message)
		}
	}
	msg := "nodemesh ignores this object: " + strings.Join(parts, "; ")
	if len(msg) > 1024 { // the API server's limit
		msg = msg[:1021] + "..."
	}
	return msg
}

func (w *eventWriter) send(ctx context.Context, d decoded) error {
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s.%x", d.ref.Name, time.Now().UnixNano()),
			Namespace: d.ref.Namespace,
		},
		InvolvedObject:      d.ref,
		Reason:              EventReason,
		Message:             eventMessage(d.diags),
		Type:                corev1.EventTypeWarning,
		Source:              corev1.EventSource{Component: EventComponent},
		ReportingController: "nodemesh.io/meshd",
		ReportingInstance:   w.cfg.LeaderElection.Identity,
		Action:              "Decode",
		FirstTimestamp:      now,
		LastTimestamp:       now,
		Count:               1,
	}
	if ev.Namespace == "" {
		ev.Namespace = metav1.NamespaceDefault // events of cluster-scoped objects
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// A previous leader may have reported this revision already.
	sel := fields.Set{"involvedObject.uid": string(d.ref.UID),
		"involvedObject.resourceVersion": d.ref.ResourceVersion, "reason": EventReason}.AsSelector().String()
	list, err := w.kube.CoreV1().Events(ev.Namespace).List(ctx, metav1.ListOptions{FieldSelector: sel, Limit: 1})
	if err == nil && len(list.Items) > 0 {
		return nil
	}
	_, err = w.kube.CoreV1().Events(ev.Namespace).Create(ctx, ev, metav1.CreateOptions{})
	return err
}

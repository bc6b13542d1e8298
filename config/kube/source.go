package kube

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/nodemesh/nodemesh/config"
)

// Source keeps a store's objects for one source equal to what the API
// server holds. See the package documentation.
type Source struct {
	cfg  Config
	kube kubernetes.Interface
	dyn  dynamic.Interface
	disc discovery.DiscoveryInterface

	kick   chan struct{} // an informer saw a change (buffered 1)
	synced chan struct{} // closed after the first Replace

	mu       sync.Mutex
	typed    []cache.Store      // typed informer caches
	custom   []cache.Store      // dynamic informer caches
	decoded  map[string]decoded // by cache key (kind/namespace/name)
	diags    []config.Diagnostic
	replaces int
	lastErr  error

	events *eventWriter
}

// New returns a Source; it does nothing until Run.
func New(cfg Config) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	kube, err := kubernetes.NewForConfig(cfg.RESTConfig)
	if err != nil {
		return nil, fmt.Errorf("kube source: client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg.RESTConfig)
	if err != nil {
		return nil, fmt.Errorf("kube source: dynamic client: %w", err)
	}
	s := &Source{
		cfg: cfg, kube: kube, dyn: dyn, disc: kube.Discovery(),
		kick:    make(chan struct{}, 1),
		synced:  make(chan struct{}),
		decoded: map[string]decoded{},
	}
	s.events = newEventWriter(cfg, kube)
	return s, nil
}

// Run watches the API server until ctx is done, then returns nil. It
// returns an error if discovery fails or ctx ends before the caches synced.
func (s *Source) Run(ctx context.Context) error {
	log := s.cfg.Logger
	d, err := discover(s.disc)
	if err != nil {
		return fmt.Errorf("kube source: %w", err)
	}
	if len(d.missing) > 0 {
		log.Info("kube source: kinds not served by the API server, not watched", "kinds", d.missing)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	factories, syncs := s.startInformers(ctx, d)
	defer func() {
		cancel()
		for _, f := range factories {
			f.Shutdown()
		}
	}()
	start := time.Now()
	if !cache.WaitForCacheSync(ctx.Done(), syncs...) {
		return fmt.Errorf("kube source: caches not synced: %w", context.Cause(ctx))
	}
	s.rebuild()
	close(s.synced)
	log.Info("kube source: synced", "source", s.cfg.Source, "custom_resources", len(d.gvrs),
		"objects", s.Status().Objects, "took", time.Since(start).Round(time.Millisecond))

	var wg sync.WaitGroup
	defer wg.Wait()
	if s.cfg.LeaderElection != nil {
		wg.Go(func() { s.events.run(ctx) })
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		}
		// Coalesce: let a burst of events (a kubectl apply of many
		// objects, a relist) land before rewriting the store.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.cfg.Debounce):
		}
		select {
		case <-s.kick:
		default:
		}
		s.rebuild()
	}
}

// stopper is what Run needs of an informer factory.
type stopper interface{ Shutdown() }

// startInformers starts the typed and dynamic informers and returns their
// factories and HasSynced functions.
func (s *Source) startInformers(ctx context.Context, d discovered) ([]stopper, []cache.InformerSynced) {
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.changed() },
		UpdateFunc: func(any, any) { s.changed() },
		DeleteFunc: func(any) { s.changed() },
	}
	ns := s.cfg.Namespace
	typedF := informers.NewSharedInformerFactoryWithOptions(s.kube, s.cfg.Resync,
		informers.WithNamespace(ns), informers.WithTransform(stripManagedFields))
	nsF := typedF
	if ns != "" { // only the watched namespace's own Namespace object
		nsF = informers.NewSharedInformerFactoryWithOptions(s.kube, s.cfg.Resync,
			informers.WithTransform(stripManagedFields),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", ns).String()
			}))
	}
	typed := []cache.SharedIndexInformer{
		nsF.Core().V1().Namespaces().Informer(),
		typedF.Core().V1().Services().Informer(),
		typedF.Core().V1().Pods().Informer(),
		typedF.Core().V1().ServiceAccounts().Informer(),
		typedF.Discovery().V1().EndpointSlices().Informer(),
	}
	dynF := dynamicinformer.NewFilteredDynamicSharedInformerFactory(s.dyn, s.cfg.Resync, ns, nil)
	var custom []cache.SharedIndexInformer
	for _, gvr := range d.gvrs {
		inf := dynF.ForResource(gvr).Informer()
		_ = inf.SetTransform(stripManagedFields)
		custom = append(custom, inf)
	}
	var syncs []cache.InformerSynced
	s.mu.Lock()
	for _, inf := range append(slices.Clone(typed), custom...) {
		_, _ = inf.AddEventHandler(handler)
		syncs = append(syncs, inf.HasSynced)
	}
	for _, inf := range typed {
		s.typed = append(s.typed, inf.GetStore())
	}
	for _, inf := range custom {
		s.custom = append(s.custom, inf.GetStore())
	}
	s.mu.Unlock()
	factories := []stopper{typedF, dynF}
	if nsF != typedF {
		factories = append(factories, nsF)
	}
	typedF.Start(ctx.Done())
	nsF.Start(ctx.Done())
	dynF.Start(ctx.Done())
	return factories, syncs
}

func (s *Source) changed() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// rebuild converts every cached object and replaces the source's objects
// in the store. Custom resources are decoded again only when their
// resourceVersion changed.
func (s *Source) rebuild() {
	s.mu.Lock()
	defer s.mu.Unlock()
	var objs []*config.Object
	for _, st := range s.typed {
		for _, o := range st.List() {
			if obj, ok := coreObject(o); ok {
				objs = append(objs, obj)
			}
		}
	}
	var diags []config.Diagnostic
	var invalid []decoded
	seen := make(map[string]bool, len(s.decoded))
	for _, st := range s.custom {
		for _, o := range st.List() {
			u, ok := o.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			k := u.GetKind() + "/" + u.GetNamespace() + "/" + u.GetName()
			seen[k] = true
			d, ok := s.decoded[k]
			if !ok || d.resourceVersion != u.GetResourceVersion() {
				d = decodeCustom(u)
				s.decoded[k] = d
			}
			diags = append(diags, d.diags...)
			if d.obj != nil {
				objs = append(objs, d.obj)
			} else {
				invalid = append(invalid, d)
			}
		}
	}
	for k := range s.decoded {
		if !seen[k] {
			delete(s.decoded, k)
		}
	}
	// Informer caches list in no particular order: sort, so that an
	// unchanged set of problems is recognised (and not logged again).
	slices.SortStableFunc(diags, func(a, b config.Diagnostic) int {
		return strings.Compare(a.Object.String(), b.Object.String())
	})
	err := s.cfg.Store.Replace(s.cfg.Source, objs)
	if err != nil {
		// The store keeps this source's last good objects.
		err = fmt.Errorf("kube source: replace %d objects in the store: %w", len(objs), err)
		s.cfg.Logger.Error("kube source: store refused the update; keeping the last good config", "err", err)
	}
	if errs := errorCount(diags); errs > 0 && !slices.EqualFunc(diags, s.diags, sameDiag) {
		s.cfg.Logger.Warn("kube source: invalid objects skipped", "errors", errs, "first", firstError(diags))
	}
	s.diags, s.lastErr = diags, err
	s.replaces++
	s.events.report(invalid)
}

func sameDiag(a, b config.Diagnostic) bool { return a == b }

func errorCount(diags []config.Diagnostic) int {
	n := 0
	for _, d := range diags {
		if d.Severity == config.SeverityError {
			n++
		}
	}
	return n
}

func firstError(diags []config.Diagnostic) string {
	for _, d := range diags {
		if d.Severity == config.SeverityError {
			return d.String()
		}
	}
	return ""
}

// HasSynced reports whether the informers synced and the store holds the
// API server's objects.
func (s *Source) HasSynced() bool {
	select {
	case <-s.synced:
		return true
	default:
		return false
	}
}

// WaitForSync blocks until HasSynced or ctx is done.
func (s *Source) WaitForSync(ctx context.Context) error {
	select {
	case <-s.synced:
		return nil
	case <-ctx.Done():
		return errors.Join(errors.New("kube source: not synced"), ctx.Err())
	}
}

// Status is what a Source last did.
type Status struct {
	Source      string
	Synced      bool
	Objects     int                 // objects handed to the store
	Replaces    int                 // store updates made (or refused)
	Err         error               // why the last update was refused; nil if applied
	Diagnostics []config.Diagnostic // of the objects the last update considered
}

// Status returns the Source's current status.
func (s *Source) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, st := range s.typed {
		n += len(st.ListKeys())
	}
	for _, d := range s.decoded {
		if d.obj != nil {
			n++
		}
	}
	return Status{Source: s.cfg.Source, Synced: s.HasSynced(), Objects: n, Replaces: s.replaces,
		Err: s.lastErr, Diagnostics: slices.Clone(s.diags)}
}

// Diagnostics of the objects the last store update considered (the
// xds.Feed view of Status).
func (s *Source) Diagnostics() []config.Diagnostic { return s.Status().Diagnostics }

package envoy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	overloadv3 "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	fixedheapv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/fixed_heap/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Names used in the bootstrap.
const (
	XDSCluster      = "xds-grpc" // static cluster to the agent's xDS proxy
	ClusterName     = "nodemesh-node-proxy"
	MetaProxy       = "NODEMESH_PROXY" // value "envoy"; see xds.MetaProxy
	MetaNodeName    = "NODE_NAME"
	heapMonitor     = "envoy.resource_monitors.fixed_heap"
	connMonitor     = "envoy.resource_monitors.global_downstream_max_connections"
	httpOptionsName = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// BootstrapConfig describes the node's Envoy. Zero values get the defaults
// noted on each field.
type BootstrapConfig struct {
	// Node is the Kubernetes node name; Envoy's node.id.
	Node string
	// XDSSocket is the unix socket of the agent's xDS proxy (Proxy).
	XDSSocket string
	// AdminPort on 127.0.0.1; default 15000.
	AdminPort uint32
	// SotW makes Envoy use State of the World ADS; default Delta.
	SotW bool
	// MaxHeapBytes for the overload manager's heap monitor; default 1 GiB.
	MaxHeapBytes uint64
	// MaxDownstreamConnections across all listeners; default 65536. Per
	// namespace limits live on the listeners the control plane sends.
	MaxDownstreamConnections int64
}

func (c BootstrapConfig) withDefaults() BootstrapConfig {
	if c.AdminPort == 0 {
		c.AdminPort = 15000
	}
	if c.MaxHeapBytes == 0 {
		c.MaxHeapBytes = 1 << 30
	}
	if c.MaxDownstreamConnections == 0 {
		c.MaxDownstreamConnections = 65536
	}
	return c
}

// Validate reports what is missing or wrong in c.
func (c BootstrapConfig) Validate() error {
	var errs []error
	if c.Node == "" {
		errs = append(errs, errors.New("node is required"))
	}
	if c.XDSSocket == "" {
		errs = append(errs, errors.New("xds socket is required"))
	} else if !filepath.IsAbs(c.XDSSocket) {
		errs = append(errs, fmt.Errorf("xds socket %q must be an absolute path", c.XDSSocket))
	}
	if c.AdminPort > 65535 {
		errs = append(errs, fmt.Errorf("admin port %d out of range", c.AdminPort))
	}
	if c.MaxDownstreamConnections < 0 {
		errs = append(errs, fmt.Errorf("max downstream connections %d is negative", c.MaxDownstreamConnections))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("envoy bootstrap config: %w", err)
	}
	return nil
}

// Bootstrap builds the node Envoy's bootstrap and checks it with the proto
// validation rules (including the typed configs packed inside).
func Bootstrap(cfg BootstrapConfig) (*bootstrapv3.Bootstrap, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	xdsCluster, err := xdsCluster(cfg.XDSSocket)
	if err != nil {
		return nil, err
	}
	overload, err := overloadManager(cfg)
	if err != nil {
		return nil, err
	}
	apiType := corev3.ApiConfigSource_DELTA_GRPC
	if cfg.SotW {
		apiType = corev3.ApiConfigSource_GRPC
	}
	ads := func() *corev3.ConfigSource {
		return &corev3.ConfigSource{
			ResourceApiVersion:    corev3.ApiVersion_V3,
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		}
	}
	md, err := structpb.NewStruct(map[string]any{MetaProxy: "envoy", MetaNodeName: cfg.Node})
	if err != nil {
		return nil, fmt.Errorf("envoy bootstrap node metadata: %w", err)
	}
	b := &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: cfg.Node, Cluster: ClusterName, Metadata: md},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Clusters: []*clusterv3.Cluster{xdsCluster},
		},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:             apiType,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{
					TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSCluster}},
				}},
				SetNodeOnFirstMessageOnly: true,
			},
			LdsConfig: ads(),
			CdsConfig: ads(),
		},
		Admin: &bootstrapv3.Admin{
			Address: socketAddress("127.0.0.1", cfg.AdminPort),
		},
		OverloadManager: overload,
		// An admin layer so operators can flip runtime keys through the
		// admin endpoint (/runtime_modify) without a restart.
		LayeredRuntime: &bootstrapv3.LayeredRuntime{Layers: []*bootstrapv3.RuntimeLayer{
			{Name: "admin", LayerSpecifier: &bootstrapv3.RuntimeLayer_AdminLayer_{AdminLayer: &bootstrapv3.RuntimeLayer_AdminLayer{}}},
		}},
	}
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("envoy bootstrap for node %s: %w", cfg.Node, err)
	}
	return b, nil
}

// xdsCluster is the static cluster Envoy uses to reach the agent's xDS
// proxy: HTTP/2 over the unix socket.
func xdsCluster(socket string) (*clusterv3.Cluster, error) {
	opts := &httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		},
	}
	optsAny, err := packValid(opts)
	if err != nil {
		return nil, fmt.Errorf("envoy bootstrap cluster %s: %w", XDSCluster, err)
	}
	return &clusterv3.Cluster{
		Name:                 XDSCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: XDSCluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: socket}}},
					}},
				}},
			}},
		},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{httpOptionsName: optsAny},
	}, nil
}

// overloadManager protects the shared proxy as a whole: a heap monitor with
// graded actions and a global cap on downstream connections.
func overloadManager(cfg BootstrapConfig) (*overloadv3.OverloadManager, error) {
	heap, err := packValid(&fixedheapv3.FixedHeapConfig{MaxHeapSizeBytes: cfg.MaxHeapBytes})
	if err != nil {
		return nil, fmt.Errorf("envoy bootstrap heap monitor: %w", err)
	}
	conns, err := packValid(&connlimitv3.DownstreamConnectionsConfig{MaxActiveDownstreamConnections: cfg.MaxDownstreamConnections})
	if err != nil {
		return nil, fmt.Errorf("envoy bootstrap connection monitor: %w", err)
	}
	timers, err := packValid(&overloadv3.ScaleTimersOverloadActionConfig{
		TimerScaleFactors: []*overloadv3.ScaleTimersOverloadActionConfig_ScaleTimer{{
			Timer:          overloadv3.ScaleTimersOverloadActionConfig_HTTP_DOWNSTREAM_CONNECTION_IDLE,
			OverloadAdjust: &overloadv3.ScaleTimersOverloadActionConfig_ScaleTimer_MinScale{MinScale: &typev3.Percent{Value: 25}},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("envoy bootstrap reduce_timeouts action: %w", err)
	}
	threshold := func(v float64) []*overloadv3.Trigger {
		return []*overloadv3.Trigger{{Name: heapMonitor, TriggerOneof: &overloadv3.Trigger_Threshold{Threshold: &overloadv3.ThresholdTrigger{Value: v}}}}
	}
	return &overloadv3.OverloadManager{
		RefreshInterval: durationpb.New(250 * time.Millisecond),
		ResourceMonitors: []*overloadv3.ResourceMonitor{
			{Name: heapMonitor, ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: heap}},
			{Name: connMonitor, ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: conns}},
		},
		Actions: []*overloadv3.OverloadAction{
			{
				Name: "envoy.overload_actions.reduce_timeouts",
				Triggers: []*overloadv3.Trigger{{Name: heapMonitor, TriggerOneof: &overloadv3.Trigger_Scaled{
					Scaled: &overloadv3.ScaledTrigger{ScalingThreshold: 0.85, SaturationThreshold: 0.95},
				}}},
				TypedConfig: timers,
			},
			{Name: "envoy.overload_actions.disable_http_keepalive", Triggers: threshold(0.92)},
			{Name: "envoy.overload_actions.shrink_heap", Triggers: threshold(0.95)},
			{Name: "envoy.overload_actions.stop_accepting_requests", Triggers: threshold(0.98)},
		},
	}, nil
}

type validator interface {
	proto.Message
	Validate() error
}

func packValid(m validator) (*anypb.Any, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return anypb.New(m)
}

func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// MarshalBootstrap renders b as indented JSON (valid YAML too), the format
// `envoy -c` reads. Output is stable for a given bootstrap.
func MarshalBootstrap(b *bootstrapv3.Bootstrap) ([]byte, error) {
	raw, err := protojson.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("marshaling envoy bootstrap: %w", err)
	}
	// protojson's spacing is deliberately unstable; re-indent for stable
	// bytes (golden files, content comparisons).
	var compact, out bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return nil, fmt.Errorf("compacting envoy bootstrap: %w", err)
	}
	if err := json.Indent(&out, compact.Bytes(), "", "  "); err != nil {
		return nil, fmt.Errorf("indenting envoy bootstrap: %w", err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// WriteBootstrap builds the bootstrap for cfg and writes it to path
// atomically (a temporary file renamed over path).
func WriteBootstrap(path string, cfg BootstrapConfig) error {
	b, err := Bootstrap(cfg)
	if err != nil {
		return err
	}
	data, err := MarshalBootstrap(b)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".bootstrap-*")
	if err != nil {
		return fmt.Errorf("writing envoy bootstrap %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing envoy bootstrap %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing envoy bootstrap %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing envoy bootstrap %s: %w", path, err)
	}
	return nil
}

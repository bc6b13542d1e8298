package dataplanev1

// Type URLs of the dataplane resources on the ADS stream.
const (
	TypeURLPrefix         = "type.googleapis.com/"
	ServiceType           = TypeURLPrefix + "nodemesh.dataplane.v1.Service"
	WorkloadType          = TypeURLPrefix + "nodemesh.dataplane.v1.Workload"
	PolicyType            = TypeURLPrefix + "nodemesh.dataplane.v1.Policy"
	NamespaceListenerType = TypeURLPrefix + "nodemesh.dataplane.v1.NamespaceListener"
)

// Types lists every dataplane type URL, in the order an agent applies them:
// listeners and workloads before the services and policies that use them.
var Types = []string{NamespaceListenerType, WorkloadType, ServiceType, PolicyType}

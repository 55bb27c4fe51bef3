package cluster

import (
	"log/slog"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/registry"
	"github.com/signrelay/signrelay/signing"
)

// Node is this relay's part of a cluster: the NATS link, the bus to the
// other nodes and the store of request resources. main and the tests wire
// it the same way: Join, then signing.New with Bus and Shared, then Start.
type Node struct {
	Link  *Link
	Bus   *Bus
	Store *Store
}

// Join connects to the cluster that cfg names (config.Validate has passed).
func Join(cfg config.Config, reg *registry.Registry, log *slog.Logger) (*Node, error) {
	link, err := Open(cfg, log)
	if err != nil {
		return nil, err
	}
	store, err := NewStore(link, StoreOptions{
		ResultTTL: cfg.Sign.ResultTTL.D(),
		MaxLife:   cfg.Sign.MaxAsyncTimeout.D(),
		MaxBytes:  int64(cfg.Sign.MaxResultsBytes) + int64(cfg.Sign.MaxPendingBytes),
		Replicas:  kvReplicas(cfg),
		External:  cfg.Cluster.NATSURL != "",
	}, log)
	if err != nil {
		_ = link.Close()
		return nil, err
	}
	return &Node{Link: link, Bus: NewBus(link, reg, log), Store: store}, nil
}

// kvReplicas is cluster.kv_replicas, or its automatic value.
func kvReplicas(cfg config.Config) int {
	if n := cfg.Cluster.KVReplicas; n > 0 {
		return n
	}
	if cfg.Cluster.NATSURL == "" && cfg.Cluster.Embedded.ClusterListen != "" {
		return max(1, min(3, len(cfg.Cluster.Embedded.Routes)))
	}
	return 1
}

// Start begins serving svc; on error everything is closed.
func (n *Node) Start(svc *signing.Service) error {
	if err := n.Bus.Start(svc); err != nil {
		_ = n.Link.Close()
		return err
	}
	if err := n.Store.Start(svc); err != nil {
		n.Bus.Close()
		_ = n.Link.Close()
		return err
	}
	n.Link.OnStateChange(func(ready bool) {
		if ready {
			n.Bus.Resync()
		}
	})
	return nil
}

// Ready reports whether the node can serve the whole API: NATS reachable,
// and the request store open. A new cluster elects its JetStream leaders
// some seconds after its routes are up (about 15 s for two embedded nodes
// here); until then asynchronous and idempotent requests would be refused
// with 503, so a load balancer must not send traffic yet.
func (n *Node) Ready() bool { return n.Link.Ready() && n.Store.Ready() }

// Close leaves the cluster.
func (n *Node) Close() {
	n.Store.Close()
	n.Bus.Close()
	_ = n.Link.Close()
}

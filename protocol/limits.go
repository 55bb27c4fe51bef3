package protocol

// Codes and close codes of contract v1.1 §G (limits of a public relay).
const (
	// CodeTooManyConnections refuses an introduction of a key that already
	// has websocket.max_connections_per_key live connections on the node;
	// the socket then closes with CloseTryAgainLater.
	CodeTooManyConnections = "too_many_connections"
	// CloseTryAgainLater (1013) closes a connection refused for a limit
	// that may have room later; the key's other connections are untouched.
	CloseTryAgainLater = 1013
)

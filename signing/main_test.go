package signing

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no Sign call or timer outlives its test.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

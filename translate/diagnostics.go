package translate

import "fmt"

// fieldf formats a field path such as spec.http[1].route[0].
func fieldf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

package protocol

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/go-playground/validator/v10"
)

var validate = newValidator()

func newValidator() *validator.Validate {
	v := validator.New(validator.WithRequiredStructEnabled())
	v.RegisterTagNameFunc(func(f reflect.StructField) string {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			return ""
		}
		return name
	})
	return v
}

// Validate checks v's `validate` tags and explains the first failure in
// terms of the wire's field names.
func Validate(v any) error {
	err := validate.Struct(v)
	if err == nil {
		return nil
	}
	var ve validator.ValidationErrors
	if !errors.As(err, &ve) || len(ve) == 0 {
		return err
	}
	return errors.New(describe(ve[0]))
}

func describe(fe validator.FieldError) string {
	f := fe.Field()
	binary := fe.Kind() == reflect.Slice
	switch fe.Tag() {
	case "required":
		return fmt.Sprintf("missing field %q", f)
	case "len":
		if binary {
			return fmt.Sprintf("%q must decode to exactly %s bytes", f, fe.Param())
		}
		return fmt.Sprintf("%q must be %s characters long", f, fe.Param())
	case "min":
		if binary {
			return fmt.Sprintf("%q must not be empty", f)
		}
		return fmt.Sprintf("%q must be at least %s", f, fe.Param())
	case "max":
		if fe.Kind() == reflect.String {
			return fmt.Sprintf("%q must be at most %s characters", f, fe.Param())
		}
		return fmt.Sprintf("%q must be at most %s", f, fe.Param())
	case "uuid":
		return fmt.Sprintf("%q must be a UUID", f)
	}
	return fmt.Sprintf("%q is invalid (%s)", f, fe.Tag())
}

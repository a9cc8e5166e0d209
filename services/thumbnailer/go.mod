module github.com/clinicalimages/clinimg/services/thumbnailer

go 1.26.8

require (
	github.com/davidbyttow/govips/v2 v2.16.0
	github.com/google/go-cmp v0.7.0
)

require (
	github.com/stretchr/testify v1.12.1 // indirect
	golang.org/x/image v0.18.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/text v0.43.0 // indirect
)

replace github.com/clinicalimages/clinimg/pkg => ../../pkg

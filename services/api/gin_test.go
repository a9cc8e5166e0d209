package api

import "github.com/gin-gonic/gin"

// The tests build routers without the route listing of gin's debug mode.
func init() { gin.SetMode(gin.TestMode) }

package committer

// FaultMenu is what ALEX may do to one request in a property schedule,
// for the schedules that kill committer processes (committer_test).
var FaultMenu = faultMenu

// PropertySeeds are the seeds of a property run (propertySeeds).
var PropertySeeds = propertySeeds

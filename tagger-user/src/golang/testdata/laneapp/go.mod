module example.com/laneapp

go 1.19

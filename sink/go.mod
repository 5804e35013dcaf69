module github.com/pgcdc/pgcdc/sink

go 1.26.8

require github.com/pgcdc/pgcdc v0.0.0

replace github.com/pgcdc/pgcdc => ../

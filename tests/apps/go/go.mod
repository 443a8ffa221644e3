module tagger.test/hop

go 1.19

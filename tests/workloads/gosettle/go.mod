module gosettle

go 1.19

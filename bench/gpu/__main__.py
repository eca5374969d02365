from bench.gpu.check import main

main()

from cogvx_mini.experiments.registry import main

main()

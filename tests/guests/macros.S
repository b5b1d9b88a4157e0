/* Macros of the test guests; included first by each guest (lib.S holds the routines). */
.macro PUTS s
    lea .Lstr\@(%rip), %rsi
    call puts
    .pushsection .rodata
.Lstr\@: .asciz "\s"
    .popsection
.endm

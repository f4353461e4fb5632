fn main() {
    lora_core::hello();
}

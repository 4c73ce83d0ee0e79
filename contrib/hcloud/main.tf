# The same servers with Terraform's hcloud provider: one hcloud_server per rendered/<name>.yaml
# (render.sh writes them). `terraform apply -var ssh_key=NAME`; HCLOUD_TOKEN in the environment.
terraform {
  required_providers {
    hcloud = {
      source  = "hetznercloud/hcloud"
      version = "~> 1.45"
    }
  }
}

variable "ssh_key" {
  type        = string
  description = "the name of the SSH key in the Hetzner project (root's key until the agent has run)"
}

variable "server_type" {
  type    = string
  default = "cpx62"
}

variable "location" {
  type    = string
  default = "fsn1"
}

locals {
  servers = { for f in fileset("${path.module}/rendered", "*.yaml") : trimsuffix(f, ".yaml") => f }
}

resource "hcloud_server" "sapari" {
  for_each    = local.servers
  name        = each.key
  server_type = var.server_type
  location    = var.location
  image       = "ubuntu-24.04"
  ssh_keys    = [var.ssh_key]
  # The rendered user-data verbatim: cloud-init runs the agent's first converge from it.
  user_data = file("${path.module}/rendered/${each.value}")

  lifecycle {
    # A new user-data means a new first boot; changes after that go through the agent.
    ignore_changes = [user_data]
  }
}

output "ipv4" {
  value = { for k, s in hcloud_server.sapari : k => s.ipv4_address }
}
